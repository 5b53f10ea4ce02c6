"""No import cycle among pipeline modules: every import statement (module level and inside functions) is an edge,
and the graph must be acyclic; and every pipeline module imports on its own."""
from __future__ import annotations

import ast
import importlib

import pytest

from .conftest import REPO

ROOT = REPO / "pipeline"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _imports(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The pipeline modules `name` imports anywhere in its code (not under `if TYPE_CHECKING:`)."""
    package = name if (ROOT / "/".join(name.split(".")[1:]) / "__init__.py").is_file() or name == "pipeline" \
        else name.rpartition(".")[0]
    skip = {id(n) for node in ast.walk(tree) if _type_checking_only(node) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import sub` imports the submodule; else an attribute of pkg
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    trees = _modules()
    return {name: _imports(name, tree, set(trees)) for name, tree in trees.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    assert "pipeline.torchmodel" in graph["pipeline.export.onnx"]  # imported inside ExportOnnx
    assert "pipeline.export.child" in graph["pipeline.export.tflite.convert"]
    assert "pipeline.calibration" not in graph["pipeline.stages"]  # under TYPE_CHECKING only


def test_no_import_cycle_among_pipeline_modules():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_pipeline_module_imports(module):
    if module.startswith("pipeline.models.") or module == "pipeline.__main__":
        pytest.importorskip("torch")
    if module == "pipeline.__main__":
        return  # running it is the CLI (tests/test_cli_errors.py)
    importlib.import_module(module)
