"""dvc.yaml lists exactly the code each stage runs, so caching is neither stale nor wasteful."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# Validation and error classes change no output; listing them (and what validation imports to know the allowed
# names) would re-run every stage on a new param.
NOT_OUTPUT_AFFECTING = {"dmr_core/params.py", "dmr_core/errors.py"}


def local_imports(path: str) -> set[str]:
    """The project modules ``path`` imports: relative imports of any level and absolute ``dmr_core.`` ones."""
    package = Path(path).parent
    found = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.parents[node.level - 2] if node.level > 1 else package
            module = base.joinpath(*(node.module or "").split("."))
        elif (node.module or "").startswith("dmr_core."):
            module = Path(*node.module.split("."))
        else:
            continue
        found.add(f"{module.as_posix()}.py")
    return found


def code_closure(stage_module: str) -> set[str]:
    """The stage module and every project module it reaches, without passing through validation."""
    seen, todo = set(), [stage_module]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            assert (ROOT / path).is_file(), f"{path} is imported but does not exist"
            if path not in NOT_OUTPUT_AFFECTING:
                todo.extend(local_imports(path))
    return seen - NOT_OUTPUT_AFFECTING


def stage_code_deps() -> dict[str, tuple[set[str], set[str]]]:
    """{stage: (the .py deps dvc.yaml lists, the code the stage's module reaches)}."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        module = body["cmd"].split()[2].replace(".", "/") + ".py"
        found[name] = ({d for d in body["deps"] if d.endswith(".py")}, code_closure(module))
    return found


def test_every_stage_lists_exactly_its_code():
    deps = stage_code_deps()
    assert deps, "dvc.yaml has no stages"
    for name, (listed, reached) in deps.items():
        assert listed == reached, f"stage {name}: missing {sorted(reached - listed)}, extra {sorted(listed - reached)}"


def test_the_closure_follows_imports_of_every_level():
    """A module deep in a subpackage reaches its siblings (level 1) and the package root (level 2)."""
    reached = code_closure("dmr_core/training/head.py")
    assert {"dmr_core/training/loop.py", "dmr_core/nets/rejection_head.py", "dmr_core/device.py",
            "dmr_core/nets/checkpoints.py"} <= reached
    assert not reached & NOT_OUTPUT_AFFECTING


def test_package_inits_hold_no_code():
    """The subpackages' __init__ files are not listed as deps, so they may hold nothing that runs."""
    for init in (ROOT / "dmr_core").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                and not (isinstance(node, ast.Assign) and node.targets[0].id == "__version__")]
        assert not code, f"{init.relative_to(ROOT)} holds code; keep package __init__ files to a docstring"


def test_every_stage_module_is_in_the_pipeline():
    """No stage module sits outside dvc.yaml (it would run unchecked through `dmr stage`)."""
    modules = {Path(body.get("do", body)["cmd"].split()[2].replace(".", "/") + ".py").name
               for body in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()}
    on_disk = {p.name for p in (ROOT / "stages").glob("*.py") if not p.name.startswith("_")}
    assert on_disk == modules
