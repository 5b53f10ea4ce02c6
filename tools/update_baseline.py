"""Rewrite tests/baselines/smartcam.json from a default-release build's index.json.

    edgepipe build --dist /tmp/b && python tools/update_baseline.py /tmp/b/smartcam/index.json

Only after a change that is meant to move the fidelity figures; say why in the commit. Tolerances and the note
are kept from the current baseline.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

BASELINE = Path(__file__).resolve().parent.parent / "tests" / "baselines" / "smartcam.json"


def baseline_from(index: dict, previous: dict) -> dict:
    targets = {}
    for t in index["targets"]:
        if "int8" not in t["target"] or t.get("status") != "passed":
            continue
        v = t["verification"]
        targets[t["target"]] = {"agreement": round(v["agreement"], 4), "outputs": {
            o: {"top1_agreement": round(d["top1_agreement"], 4), "cosine_mean": round(d["cosine_mean"], 4)}
            for o, d in v["outputs"].items()}}
    return {"_about": previous["_about"], "tolerance": previous["tolerance"],
            "reference_accuracy": round(index["reference_accuracy"], 4), "targets": targets}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: python tools/update_baseline.py DIST/smartcam/index.json", file=sys.stderr)
        return 2
    new = baseline_from(json.loads(Path(argv[0]).read_text()), json.loads(BASELINE.read_text()))
    BASELINE.write_text(json.dumps(new, indent=1) + "\n")
    print(f"wrote {BASELINE} ({len(new['targets'])} int8 targets)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
