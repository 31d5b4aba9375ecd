"""The locked install: requirements.lock pins every package with its hashes and satisfies pyproject.toml, so that
`pip install -r requirements.lock` installs what the project asks for without resolving anything."""

import re
import tomllib

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from helpers import ROOT

PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")


def locked(text: str) -> dict[str, list[tuple[str, str | None, int]]]:
    """{package: [(version, marker, number of hashes)]} of a requirements file written by `uv pip compile`."""
    pins: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        if match := PIN.match(line):
            current = [match["version"], match["marker"], 0]
            pins.setdefault(canonicalize_name(match["name"]), []).append(current)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            current[2] += 1
        elif line.strip() and not line.lstrip().startswith("#"):
            raise AssertionError(f"unexpected line in requirements.lock: {line!r}")
    return {name: [tuple(v) for v in versions] for name, versions in pins.items()}


def version_here(pins: dict, name: str) -> str | None:
    """The version the lock installs here (its marker evaluated for this interpreter), or None."""
    for version, marker, _ in pins.get(canonicalize_name(name), []):
        if marker is None or Marker(marker).evaluate():
            return version
    return None


def test_every_pin_carries_hashes():
    pins = locked((ROOT / "requirements.lock").read_text())
    assert len(pins) > 50
    unhashed = [name for name, versions in pins.items() for _, _, hashes in versions if hashes == 0]
    assert not unhashed


def test_the_lock_satisfies_pyproject_and_its_test_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked((ROOT / "requirements.lock").read_text())
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(spec)
        version = version_here(pins, requirement.name)
        assert version is not None, f"{requirement.name} is not in requirements.lock: refresh it (docs/install.md)"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {requirement.name}=={version}, outside {spec!r}: refresh it (docs/install.md)")
    # the packages the extras dvc[s3] and moto[server] bring are locked too
    assert version_here(pins, "dvc-s3") and version_here(pins, "flask")


def test_the_parser_finds_a_missing_hash_and_a_marker():
    pins = locked("numpy==2.4.6 ; python_full_version < '3.12' \\\n    --hash=sha256:ab\nzarr==3.1.6\n")
    assert pins["numpy"] == [("2.4.6", "python_full_version < '3.12'", 1)]
    assert pins["zarr"] == [("3.1.6", None, 0)]
