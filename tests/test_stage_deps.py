"""dvc.yaml lists exactly the code each stage runs, so caching is neither stale nor wasteful."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Validation and error classes do not change any output; listing them would re-run everything on a new param.
NOT_OUTPUT_AFFECTING = {"dmr_core/params.py", "dmr_core/errors.py"}


def local_imports(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    found = set()
    package = path.split("/")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(f"{package}/{node.module}.py")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dmr_core."):
            found.add(node.module.replace(".", "/") + ".py")
    return found


def code_closure(stage_module: str) -> set[str]:
    seen, todo = set(), [stage_module]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(local_imports(path))
    return seen - NOT_OUTPUT_AFFECTING


def test_every_stage_lists_exactly_its_code():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages, "dvc.yaml has no stages"
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = body["cmd"].split()[2].replace(".", "/") + ".py"
        listed = {d for d in body["deps"] if d.endswith(".py")}
        assert listed == code_closure(module), (
            f"stage {name}: missing {sorted(code_closure(module) - listed)}, extra {sorted(listed - code_closure(module))}")
