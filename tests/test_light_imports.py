"""`import pipeline`, `import targets`, `edgepipe --help` and `edgepipe plan` import no framework."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .conftest import REPO

HEAVY = ("torch", "onnxruntime", "openvino", "tensorflow", "onnx", "nncf", "ai_edge_litert")

PROBE = """
import json, sys, runpy
sys.argv = {argv!r}
{code}
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))
"""


def _imported(code: str, argv=("x",)) -> list[str]:
    script = PROBE.format(argv=list(argv), code=code, heavy=list(HEAVY))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_pipeline_and_targets_is_light():
    assert _imported("import pipeline, targets, pipeline.cli, pipeline.config, pipeline.stages") == []


def test_help_is_light():
    code = "from pipeline.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert _imported(code) == []


def test_plan_is_light():
    code = "from pipeline.cli import main\nassert main(['plan']) == 0"
    assert _imported(code) == []


def test_reading_every_stage_registry_entry_is_light():
    """The plan reads each stage's class facts (consumes, produces, requires) before anything runs: every stage
    module must import without a framework, and every registered stage must resolve (no skip on ImportError)."""
    code = ("from pipeline.stages import STAGES, stage_class_info\n"
            "infos = {n: stage_class_info(n) for n in STAGES}\n"
            "assert all(i['produces'] and i['version'] >= 1 for i in infos.values()), infos")
    assert _imported(code) == []
