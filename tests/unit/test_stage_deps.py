"""dvc.yaml lists exactly the code each stage runs, so caching is neither stale nor wasteful."""

import ast
from pathlib import Path

import yaml

from dmr_core.runtime.code_deps import (NOT_OUTPUT_AFFECTING_FILES, code_closure, expected_code_deps,
                                       rewrite_code_deps, stage_module)
from helpers import ROOT


def stage_code_deps() -> dict[str, tuple[set[str], set[str]]]:
    """{stage: (the .py deps dvc.yaml lists, the code the stage's module reaches)}."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    found = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        found[name] = ({d for d in body["deps"] if d.endswith(".py")}, code_closure(ROOT, stage_module(body)))
    return found


def test_every_stage_lists_exactly_its_code():
    deps = stage_code_deps()
    assert deps, "dvc.yaml has no stages"
    for name, (listed, reached) in deps.items():
        assert listed == reached, f"stage {name}: missing {sorted(reached - listed)}, extra {sorted(listed - reached)}"


def test_the_closure_follows_imports_of_every_level():
    """A module deep in a subpackage reaches its siblings (level 1) and the package root (level 2)."""
    reached = code_closure(ROOT, "dmr_core/training/head.py")
    assert {"dmr_core/training/loop.py", "dmr_core/nets/rejection_head.py", "dmr_core/device.py",
            "dmr_core/nets/checkpoints.py"} <= reached
    assert not reached & NOT_OUTPUT_AFFECTING_FILES


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


def test_the_rewrite_is_current_and_restores_a_damaged_list():
    """`python -m dmr_core.runtime.code_deps` leaves the committed dvc.yaml as it is, and puts back a code dep that
    was dropped and drops one that is not imported, keeping the data deps and the comments."""
    text = (ROOT / "dvc.yaml").read_text()
    expected = expected_code_deps(ROOT)
    assert rewrite_code_deps(text, expected) == text
    damaged = text.replace("      - dmr_core/data/datasets.py\n", "      - dmr_core/plotting.py\n", 1)
    assert damaged != text
    assert rewrite_code_deps(damaged, expected) == text


def test_no_stage_depends_on_the_launcher():
    """The launcher and the error path change no output, so editing them re-runs nothing."""
    for name, (listed, _) in stage_code_deps().items():
        assert not {d for d in listed if d.startswith("dmr_core/runtime/") or d.startswith("stages/_")}, name


def test_the_library_imports_nothing_from_the_stages():
    for path in (ROOT / "dmr_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n == "stages" or n.startswith("stages.") for n in names), path.relative_to(ROOT)
