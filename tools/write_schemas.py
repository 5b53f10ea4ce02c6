"""Write the JSON Schemas of release configs and target profiles -> tools/schemas/{release,target}.schema.json.

Editors (e.g. the YAML language server) can validate configs with them. Run after changing pipeline/config.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import json_schemas  # noqa: E402


def main() -> None:
    out = Path(__file__).resolve().parent / "schemas"
    out.mkdir(exist_ok=True)
    for which, schema in json_schemas().items():
        (out / f"{which}.schema.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out / f'{which}.schema.json'}")


if __name__ == "__main__":
    main()
