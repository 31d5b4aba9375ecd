"""The code deps of every stage in dvc.yaml, derived from the import closure of its module, so that a code change
re-runs exactly the stages whose code it is.

``python -m dmr_core.runtime.code_deps`` rewrites the ``.py`` deps of dvc.yaml from the imports (data deps and
everything else stay as written); ``--check`` only says which stages differ and exits 1 if any does."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

# Validation, the error classes and how a stage is launched change no output; listing them (and what validation
# imports to know the allowed names) would re-run every stage on a new param or a launcher fix.
NOT_OUTPUT_AFFECTING_FILES = {"dmr_core/params.py", "dmr_core/errors.py"}
NOT_OUTPUT_AFFECTING_PACKAGES = ("dmr_core/runtime/",)


def affects_outputs(path: str) -> bool:
    return path not in NOT_OUTPUT_AFFECTING_FILES and not path.startswith(NOT_OUTPUT_AFFECTING_PACKAGES)


def local_imports(root: Path, path: str) -> set[str]:
    """The project modules ``path`` imports: relative imports of any level and absolute ``dmr_core.`` ones."""
    package = Path(path).parent
    found = set()
    for node in ast.walk(ast.parse((root / path).read_text())):
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


def code_closure(root: Path, stage_module: str) -> set[str]:
    """The stage module and every project module it reaches that can change what it writes."""
    seen, todo = set(), [stage_module]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            if not (root / path).is_file():
                raise FileNotFoundError(f"{path} is imported but does not exist")
            if affects_outputs(path):
                todo.extend(local_imports(root, path))
    return {path for path in seen if affects_outputs(path)}


def stage_module(body: dict) -> str:
    """``stages/<name>.py`` of a stage's ``python -m stages.<name> ...`` command."""
    return body["cmd"].split()[2].replace(".", "/") + ".py"


def expected_code_deps(root: Path) -> dict[str, list[str]]:
    """{stage: its code deps in dvc.yaml's order: the stage module, then the library modules it reaches, sorted}."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    expected = {}
    for name, stage in stages.items():
        module = stage_module(stage.get("do", stage))
        expected[name] = [module, *sorted(code_closure(root, module) - {module})]
    return expected


STAGE_LINE = re.compile(r"^  (?P<name>[A-Za-z0-9_]+):\s*$")
DEPS_LINE = re.compile(r"^(?P<indent> +)deps:\s*$")
ITEM_LINE = re.compile(r"^(?P<indent> +)- (?P<value>\S+)\s*$")


def rewrite_code_deps(text: str, expected: dict[str, list[str]]) -> str:
    """dvc.yaml's text with each stage's ``.py`` deps replaced by ``expected`` after its other deps; comments and
    every other line unchanged."""
    out, stage, lines, i = [], None, text.splitlines(keepends=True), 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if match := STAGE_LINE.match(line):
            stage = match["name"]
        elif DEPS_LINE.match(line) and stage in expected:
            kept, indent = [], None
            while i < len(lines) and (item := ITEM_LINE.match(lines[i])):
                indent = item["indent"]
                if not item["value"].endswith(".py"):
                    kept.append(lines[i])
                i += 1
            out.extend(kept)
            out.extend(f"{indent}- {path}\n" for path in expected[stage])
    return "".join(out)


def main(argv: list[str]) -> int:
    root = Path.cwd()
    path = root / "dvc.yaml"
    text = path.read_text()
    new = rewrite_code_deps(text, expected_code_deps(root))
    if "--check" in argv:
        if new != text:
            print("dvc.yaml's code deps differ from the imports; run `python -m dmr_core.runtime.code_deps`",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        path.write_text(new)
        print("dvc.yaml: code deps rewritten from the imports")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
