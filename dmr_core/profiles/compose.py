"""Experiment profiles: each configuration of the paper's tables as a named set of params overrides.

A profile is one small YAML file beside this module, ``<name>.yaml``::

    paper: Table 1, the "Ours (DMR)" row and every row beside it
    needs: [gpu, internet]     # what it needs to be worth running (NEEDS)
    note: what it runs, how many epochs and why
    extends: _paper_wrn40_2    # optional: a profile whose params come first
    params:                    # dotted params.yaml keys -> values, as `dvc exp run -S key=value` takes them
      data.id_set: cifar10
      synth.method: dmr

``params`` override ``params.yaml``; the profile it ``extends`` is applied first, so a shared recipe (the paper's
classifier training, its head) is written once, in a base whose name starts with ``_`` (not an experiment of its
own), and a new key reaches every profile of that recipe by one line in the base. ``dmr exp <name>`` validates the
composed params (:func:`compose_params`, then :func:`dmr_core.params.parse_params`) and runs
``dvc exp run -n <name> -S key=value ...`` (:func:`exp_run_command`). The values are written in the override
grammar DVC reads ``-S`` with (Hydra's), so DVC sets exactly the values that were validated.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ParamsError

# What a profile may need to be worth running: a GPU (a classifier trained from scratch for the paper's epochs
# takes days on a CPU) or the internet (the paper's OOD sets, CIFAR-100 without an offline archive).
NEEDS = {
    "gpu": "a GPU: the classifier trains from scratch, hours to days on a CPU",
    "internet": "the internet: the paper's OOD sets (data.ood_sets: paper) and CIFAR-100 are downloaded",
}
BASE_PREFIX = "_"


class _ProfileFile(BaseModel):
    """The fields of a profile file; a base (``_name``) needs only ``params`` (and may have a note)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    paper: str | None = None
    needs: list[Literal[tuple(NEEDS)]] = Field(default_factory=list)
    note: str | None = None
    extends: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    """A profile with the profiles it extends resolved: ``params`` holds every override, the base's first."""

    name: str
    paper: str
    needs: tuple[str, ...]
    note: str
    params: dict[str, Any]


def _folder():
    return resources.files(__package__)


def profile_names(*, bases: bool = False) -> list[str]:
    """The names of the profiles (the experiments; also the bases starting with ``_`` if ``bases``), sorted."""
    names = sorted(entry.name.removesuffix(".yaml") for entry in _folder().iterdir() if entry.name.endswith(".yaml"))
    return [name for name in names if bases or not name.startswith(BASE_PREFIX)]


@functools.cache
def _read(name: str) -> _ProfileFile:
    entry = _folder().joinpath(f"{name}.yaml")
    if not name.replace("_", "").replace("-", "").isalnum() or not entry.is_file():  # a name, not a path
        raise ParamsError(f"unknown profile {name!r}; `dmr profiles` lists them ({', '.join(profile_names())})")
    try:
        return _ProfileFile.model_validate(yaml.safe_load(entry.read_text()))
    except (yaml.YAMLError, ValidationError) as err:
        first = " ".join(str(err).split())[:300]
        raise ParamsError(f"profile {name!r} ({entry.name}) is malformed: {first}") from None


def _resolved_params(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The profile's overrides with those of the profiles it extends applied first."""
    if name in seen:
        raise ParamsError(f"profile {seen[0]!r} extends itself through {' -> '.join((*seen, name))}")
    entry = _read(name)
    params = _resolved_params(entry.extends, (*seen, name)) if entry.extends else {}
    for key in entry.params:
        split_key(key, f"profile {name!r}")
    return {**params, **entry.params}


def load_profile(name: str) -> Profile:
    """The named profile, resolved; a one-line :class:`ParamsError` for an unknown or malformed one."""
    entry = _read(name)
    if name.startswith(BASE_PREFIX):
        raise ParamsError(f"{name!r} is a base that other profiles extend, not an experiment; choose one of "
                          f"{', '.join(profile_names())}")
    if not entry.paper or not entry.note:
        raise ParamsError(f"profile {name!r} needs a 'paper' line and a 'note' saying what it runs")
    return Profile(name, entry.paper, tuple(entry.needs), " ".join(entry.note.split()), _resolved_params(name))


def split_key(key: str, where: str = "-S") -> tuple[str, str]:
    """``section.key`` → (section, key); params.yaml has two levels, so anything else is refused in one line."""
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ParamsError(f"{where}: {key!r} is not a params key; write section.key, e.g. classifier.epochs")
    return parts[0], parts[1]


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` as ``dvc exp run -S`` reads it (Hydra's override grammar: ``30`` an int, ``[a,b]`` a list,
    ``null``, quoted strings), so that the value validated here is the value DVC will set."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    if "=" not in text:
        raise ParamsError(f"-S {text!r}: write key=value, e.g. -S classifier.epochs=30")
    try:
        override = OverridesParser.create().parse_override(text)
    except HydraException as err:
        reason = " ".join(str(err).split())[:160]
        raise ParamsError(f"-S {text!r}: not a value DVC can read ({reason}); quote strings with odd "
                          "characters, e.g. -S \"data.id_set='~/my data'\"") from None
    if override.type is not OverrideType.CHANGE or override.package is not None:
        raise ParamsError(f"-S {text!r}: only plain key=value changes of existing keys are supported")
    key = override.key_or_group
    split_key(key)
    return key, override.value()


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the params mapping ``raw`` (params.yaml's content) with each ``section.key`` set; an unknown
    section or key is added as given, for params validation to refuse by name."""
    composed = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        section, key = split_key(dotted)
        if not isinstance(composed.get(section, {}), dict):
            raise ParamsError(f"{dotted}: params.yaml's {section!r} is not a section of keys")
        composed.setdefault(section, {})[key] = copy.deepcopy(value)
    return composed


def compose_overrides(profile: Profile, extra: Iterable[tuple[str, Any]] = ()) -> dict[str, Any]:
    """The profile's overrides, then ``extra`` (the user's ``-S``) over them: one value per key."""
    overrides = dict(profile.params)
    for key, value in extra:
        overrides.pop(key, None)  # the user's value comes last, in the order given
        overrides[key] = value
    return overrides


def compose_params(raw: Mapping[str, Any], profile: Profile, extra: Iterable[tuple[str, Any]] = ()) -> dict:
    """params.yaml's content ``raw`` with the profile's overrides and then ``extra`` applied: the params the
    experiment will run with."""
    return apply_overrides(raw, compose_overrides(profile, extra))


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (true is not 1, though Python says so; 3 and 3.0 are one number)."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def changed_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides whose value differs from params.yaml's content ``raw`` (the others need no ``-S``: the
    experiment starts from params.yaml)."""
    changed = {}
    for dotted, value in overrides.items():
        section, key = split_key(dotted)
        current = raw.get(section, {})
        if not (isinstance(current, dict) and key in current and _same(current[key], value)):
            changed[dotted] = value
    return changed


def _parses_back(text: str, value: Any) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_override(f"k={text}").value()
    except HydraException:
        return False
    return parsed == value and type(parsed) is type(value) and (
        not isinstance(value, list) or all(type(a) is type(b) for a, b in zip(parsed, value, strict=True)))


def override_value(value: Any) -> str:
    """``value`` written in DVC's ``-S`` grammar (Hydra's), checked to read back as the same value and type."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = value
        if not _parses_back(text, value):  # a string with characters the grammar reads otherwise: quote it
            text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    elif isinstance(value, list):
        text = "[" + ",".join(override_value(item) for item in value) + "]"
    else:
        raise ParamsError(f"a params value of type {type(value).__name__} ({value!r}) cannot be passed to "
                          "`dvc exp run -S`; use a number, string, true/false, null or a list of them")
    if not _parses_back(text, value):
        raise ParamsError(f"the value {value!r} cannot be written for `dvc exp run -S`; simplify it")
    return text


def exp_run_command(name: str, overrides: Mapping[str, Any], queue: bool = False) -> list[str]:
    """``dvc exp run -n <name> [--queue] -S key=value ...`` for the composed overrides."""
    command = ["dvc", "exp", "run", "-n", name, *(["--queue"] if queue else [])]
    for key, value in overrides.items():
        command += ["-S", f"{key}={override_value(value)}"]
    return command


def free_name(name: str, taken: Iterable[str]) -> str:
    """``name``, or ``name-2``, ``name-3``, … the first not ``taken`` (DVC refuses a second experiment of one
    name on the same commit)."""
    taken = set(taken)
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"
