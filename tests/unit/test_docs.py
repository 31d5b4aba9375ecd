"""The README and docs/: the README fits on a screen, starts with the set-up lines CI runs, keeps the results
markers, and every relative link and anchor in it and in docs/*.md resolves.

Only pytest and the standard library: these tests run before anything else is installed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"

MAX_README_BYTES = 12_288
INSTALL_LINE = "pip install -r requirements.lock && pip install --no-deps -e ."
RESULTS_BEGIN, RESULTS_END = "<!-- results:begin -->", "<!-- results:end -->"

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(?P<title>.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1)[^\n])+?\1")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a link or heading inside a code block is not one)."""
    lines, fence = [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0]
        elif fence is not None and match and match.group(1)[0] == fence:
            fence = None
        elif fence is None:
            lines.append(line)
    return lines


def code_blocks(text: str) -> list[list[str]]:
    """The fenced code blocks of a Markdown text, each as its lines."""
    blocks, current, fence = [], [], None
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence, current = match.group(1)[0], []
        elif fence is not None and match and match.group(1)[0] == fence:
            blocks.append(current)
            fence = None
        elif fence is not None:
            current.append(line)
    return blocks


def slug(title: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped except '-' (and '_'), spaces → '-'."""
    title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading counts by its text
    title = title.lower()
    title = "".join(ch for ch in title if ch.isalnum() or ch in "-_ ")
    return title.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor GitHub makes for the headings of a Markdown text (a repeated heading gets -1, -2, …)."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group("title"))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images of a text, outside code blocks and inline code."""
    prose = INLINE_CODE.sub("", "\n".join(prose_lines(text)))  # a link's text may wrap onto the next line
    return [m.group("target") for pattern in (LINK, IMAGE) for m in pattern.finditer(prose)]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: Path) -> list[str]:
    """Each relative link of a Markdown file whose file is missing, or whose #anchor no heading of it makes."""
    problems = []
    for target in links(path.read_text(encoding="utf-8")):
        if re.match(r"(?i)^(https?://|mailto:)", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{shown(path)}: {target}: no such file")
            continue
        if anchor and linked.suffix == ".md":
            if anchor not in anchors(linked.read_text(encoding="utf-8")):
                problems.append(f"{shown(path)}: {target}: no heading makes #{anchor}")
    return problems


def last_command(script: Path) -> str:
    """The last line of a shell script that is not blank and not a comment."""
    lines = [line.strip() for line in script.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")][-1]


def setup_problems(readme_text: str, test_command: str) -> list[str]:
    """What is wrong with the README's first code block: install line, then `dvc repro`, then the test command."""
    blocks = code_blocks(readme_text)
    if not blocks:
        return ["README.md has no fenced code block"]
    lines = [line.strip() for line in blocks[0] if line.strip()]
    expected = [("the install line", lambda line: line == INSTALL_LINE),
                ("the line running `dvc repro`", lambda line: re.search(r"\bdvc repro\b", line) is not None),
                (f"the test command `{test_command}`", lambda line: line == test_command)]
    problems = []
    for position, (what, ok) in enumerate(expected):
        got = lines[position] if position < len(lines) else None
        if got is None or not ok(got):
            problems.append(f"line {position + 1} of the first code block should be {what}, not {got!r}")
    return problems


# --- the checks on this repository


def test_readme_fits_in_12_kib():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {MAX_README_BYTES})"


def test_every_relative_link_and_anchor_resolves():
    assert DOCS.is_dir() and list(DOCS.glob("*.md")), "docs/ holds no Markdown page"
    problems = [problem for path in markdown_files() for problem in broken_links(path)]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README.read_text(encoding="utf-8"))}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md's Documentation list lacks {missing}"


def test_readme_starts_with_install_run_and_the_ci_test_command():
    test_command = last_command(ROOT / ".ci" / "run")
    assert "pytest" in test_command, f".ci/run's last command is not the test command: {test_command!r}"
    problems = setup_problems(README.read_text(encoding="utf-8"), test_command)
    assert not problems, "\n".join(problems)
    assert (ROOT / "requirements.lock").is_file(), "the install line reads requirements.lock, which is missing"


def test_readme_holds_the_results_markers_in_order():
    text = README.read_text(encoding="utf-8")
    assert text.count(RESULTS_BEGIN) == 1 and text.count(RESULTS_END) == 1, "one results:begin and one results:end"
    assert text.index(RESULTS_BEGIN) < text.index(RESULTS_END), "results:begin must come before results:end"


# --- the checks can fail: each helper on a small wrong input


def test_a_dangling_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section, with punctuation!\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-section-with-punctuation) [self](#page) [web](https://example.org/x)\n"
                    "[gone](missing.md) [bad anchor](other.md#nowhere) [bad self](#nowhere)\n"
                    "`[in code](missing_too.md)`\n\n```\n[in a block](missing_three.md)\n```\n", encoding="utf-8")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert any("missing.md" in p for p in problems)
    assert sum("#nowhere" in p for p in problems) == 2


@pytest.mark.parametrize("title, expected", [
    ("Reproducing the paper's tables", "reproducing-the-papers-tables"),
    ("What happens when…", "what-happens-when"),
    ("Install, run, test", "install-run-test"),
    ("Batch b12: the authors' sampled-latent route", "batch-b12-the-authors-sampled-latent-route"),
    ("`dmr score` and `dmr_export`", "dmr-score-and-dmr_export"),
])
def test_slugs_follow_github(title, expected):
    assert slug(title) == expected


def test_a_wrong_first_code_block_is_reported():
    command = "DMR_DATA_HOME=../shared/data python -m pytest -q"
    good = f"# x\n\n```bash\n{INSTALL_LINE}\nDMR_DATA_HOME=../shared/data dvc repro\n{command}\n```\n"
    assert setup_problems(good, command) == []
    swapped = f"```bash\nDMR_DATA_HOME=../shared/data dvc repro\n{INSTALL_LINE}\n{command}\n```\n"
    assert len(setup_problems(swapped, command)) == 2
    other_test = good.replace(command, "python -m pytest")
    assert len(setup_problems(other_test, command)) == 1
    assert setup_problems("no code here\n", command) == ["README.md has no fenced code block"]


def test_the_last_command_of_a_script_skips_comments_and_blanks(tmp_path):
    script = tmp_path / "run"
    script.write_text("#!/usr/bin/env bash\nset -e\necho one\n# a comment\n\n", encoding="utf-8")
    assert last_command(script) == "echo one"
