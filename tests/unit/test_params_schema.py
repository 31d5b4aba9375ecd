"""Every key of the params schema against hostile values, with the cases derived from the pydantic models.

The walk reads each section of :class:`Params`, each of its fields and the field's constraints (ge/gt/le/lt,
min_length), so a new key is covered here without a new test. For every value tried, one of two things must hold:
the value is valid by its field's own constraints and parses, or ``parse_params`` raises :class:`ParamsError` whose
message is one line naming the dotted key. A value outside the field's constraints must be refused. No other
exception type may escape (a rule across keys may refuse a value its field allows, but it too must name the key).
"""

from __future__ import annotations

import copy
import math
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from dmr_core.data.datasets import OOD_SET_NAMES, is_path_spec, user_path
from dmr_core.params import Params, ParamsError, memory_cost, memory_needed, parse_params
from dmr_core.runtime.machine import memory_size
from helpers import DEFAULTS

# Hypothesis: few examples, no example database written into the project, no per-example deadline
FAST = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def schema_keys() -> list[tuple[str, str, FieldInfo]]:
    """(section, key, field) for every key of every section of the schema."""
    return [(section, name, field)
            for section, section_field in Params.model_fields.items()
            for name, field in section_field.annotation.model_fields.items()]


KEYS = schema_keys()


def kind(field: FieldInfo) -> str:
    """The kind of value a field holds; a new kind must get its cases here before its keys pass."""
    annotation = field.annotation
    if annotation is bool:
        return "bool"
    if annotation in (int, float):
        return "number"
    if get_origin(annotation) is Literal:
        return "choice"
    if get_origin(annotation) is list and get_origin(get_args(annotation)[0]) is Literal:
        return "list"
    if (get_origin(annotation) is list and get_origin(get_args(annotation)[0]) is Annotated
            and get_args(get_args(annotation)[0])[0] in (int, float)):
        return "numbers"  # figures.ks / lambdas: a list of numbers, each with the constraints of its item
    if get_origin(annotation) in (Union, UnionType) and {get_origin(a) for a in get_args(annotation)} == {Literal, list}:
        return "choice_or_list"  # data.ood_sets: a suite or a list of names / paths
    if (get_origin(annotation) in (Union, UnionType)
            and [get_origin(a) for a in get_args(annotation)] == [Literal, Annotated]):
        return "choice_or_number"  # classifier.input_size: auto or a number of pixels
    if get_origin(annotation) is dict:
        return "options"  # generator.options: keyword arguments (names to scalars) for a user's entry point
    if annotation is str:
        return "text"
    if annotation == (str | None):
        return "optional text"
    raise AssertionError(f"no test cases for a key of type {annotation}; add them to {__file__}")


def item_type(field: FieldInfo) -> type:
    """int or float: the type of a numbers key's items."""
    return get_args(get_args(field.annotation)[0])[0]


def item_limits(field: FieldInfo) -> dict[str, Any]:
    """The constraints of a numbers key's items (pydantic keeps them in the item's Annotated metadata)."""
    return limits(get_args(field.annotation)[0].__metadata__[0])


def choices(field: FieldInfo) -> tuple:
    annotation = field.annotation
    match kind(field):
        case "choice_or_list":
            return tuple(c for a in get_args(annotation) if get_origin(a) is Literal for c in get_args(a))
        case "numbers" | "text" | "optional text" | "options":  # free names, checked against what they name
            return ()
    return get_args(get_args(annotation)[0] if get_origin(annotation) is list else annotation)


def names_listed(field: FieldInfo) -> tuple:
    """What a list of a choice_or_list key may hold: the OOD set names (paths are tried by tests of their own)."""
    return OOD_SET_NAMES


def existing_set_path(value: Any) -> bool:
    """A string that names an existing folder or tar by the path rule (``./x``, ``~``, ``a/b``, ``x.tar``)."""
    return isinstance(value, str) and is_path_spec(value) and (
        user_path(value).is_dir() or (user_path(value).is_file() and value.lower().endswith(".tar")))


CONSTRAINTS = {at.Gt: "gt", at.Ge: "ge", at.Lt: "lt", at.Le: "le", at.MinLen: "min_length", at.MaxLen: "max_length"}


def limits(field: FieldInfo) -> dict[str, Any]:
    """The field's constraints as {'ge': 0, 'lt': 1, 'min_length': 1, ...}."""
    return {CONSTRAINTS[type(item)]: getattr(item, CONSTRAINTS[type(item)])
            for item in field.metadata if type(item) in CONSTRAINTS}


def in_range(value: float, bounds: dict[str, Any]) -> bool:
    return (("gt" not in bounds or value > bounds["gt"]) and ("ge" not in bounds or value >= bounds["ge"])
            and ("lt" not in bounds or value < bounds["lt"]) and ("le" not in bounds or value <= bounds["le"]))


def number_is_valid(annotation: type, bounds: dict[str, Any], value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if annotation is int and isinstance(value, float) and not value.is_integer():
        return False
    return in_range(value, bounds)


def valid_by_field(field: FieldInfo, value: Any) -> bool:
    """Whether ``value`` satisfies the field's own type and constraints (not the rules across keys)."""
    bounds = limits(field)
    match kind(field):
        case "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            if isinstance(value, float) and not math.isfinite(value):
                return False
            if field.annotation is int and isinstance(value, float) and not value.is_integer():
                return False
            return in_range(value, bounds)
        case "bool":
            return isinstance(value, bool)
        case "choice":
            return isinstance(value, str) and value in choices(field)
        case "list":
            return (isinstance(value, list) and all(isinstance(v, str) and v in choices(field) for v in value)
                    and len(value) >= bounds.get("min_length", 0) and len(value) <= bounds.get("max_length", 1 << 62)
                    and len(set(value)) == len(value))
        case "numbers":
            return (isinstance(value, list) and len(value) >= bounds.get("min_length", 0)
                    and len(set(map(repr, value))) == len(value)
                    and all(number_is_valid(item_type(field), item_limits(field), v) for v in value))
        case "choice_or_list":
            if isinstance(value, str):
                return value in choices(field)
            return (isinstance(value, list) and len(value) >= 1 and len(set(map(repr, value))) == len(value)
                    and all(isinstance(v, str) and (v in names_listed(field) or existing_set_path(v)) for v in value))
        case "choice_or_number":
            word, number = get_args(field.annotation)
            if isinstance(value, str):
                return value in get_args(word)
            return number_is_valid(get_args(number)[0], limits(number.__metadata__[0]), value)
        case "text":
            return isinstance(value, str) and len(value) >= bounds.get("min_length", 0)
        case "optional text":
            return value is None or isinstance(value, str)
        case "options":
            return isinstance(value, dict) and all(
                isinstance(name, str) and (item is None or isinstance(item, (str, bool, int))
                                           or (isinstance(item, float) and math.isfinite(item)))
                for name, item in value.items())
    raise AssertionError(kind(field))


def check(section: str, key: str, field: FieldInfo, value: Any) -> None:
    """The one property: accepted only if valid by the field, else (or for a rule across keys) a one-line
    ParamsError naming ``section.key``; never another exception."""
    raw = copy.deepcopy(DEFAULTS)
    raw[section][key] = value
    try:
        parse_params(raw)
    except ParamsError as err:
        message = str(err)
        assert "\n" not in message and message.startswith("invalid params: "), message
        assert f"{section}.{key}" in message, f"{section}.{key} = {value!r}: {message}"
        return
    except Exception as err:  # any other type is the failure this test looks for
        raise AssertionError(f"{section}.{key} = {value!r} raised {type(err).__name__}: {err}") from err
    assert valid_by_field(field, value), f"{section}.{key} = {value!r} was accepted"


def fixed_values(field: FieldInfo, default: Any) -> list[Any]:
    """The values every key of its kind gets: the edges of its range and the usual hostile ones."""
    wrong_types = ["many", "", None, [1], {"a": 1}]
    match kind(field):
        case "number":
            edges = []
            for bound in limits(field).values():
                step = 1 if field.annotation is int else 1e-9
                edges += [bound, bound - step, bound + step]
            return [0, -1, -0.5, 0.5, 1, float("nan"), float("inf"), float("-inf"), 10**30, 1e300, 10**400, True,
                    *edges, *wrong_types]
        case "bool":
            return [True, False, "maybe", 2, 0.5, *wrong_types]
        case "choice":
            return [*choices(field), "no_such_choice", 0, True, ["a"], *wrong_types]
        case "list":
            names = list(choices(field))
            return [[], [names[0]], [names[0], names[0]], [*default, default[0]], names, ["no_such_item"],
                    [names[0], 3], names[0], 0, None, [[names[0]]]]
        case "numbers":
            edges = [b + d for b in item_limits(field).values() for d in (-1, 0, 1)]
            return [[], default, [default[0], default[0]], [*default, *edges], [1, float("nan")], [float("inf")],
                    [True], ["many"], [[1]], 1, None, "text", [10**400], [0.5, 1.5]]
        case "choice_or_list":
            names = list(names_listed(field))
            return [*choices(field), "no_such_suite", [], [names[0]], [names[0], names[0]], names,
                    ["no_such_item"], ["./no/such/folder"], [names[0], 3], 0, None, [[names[0]]], *wrong_types]
        case "choice_or_number":
            word, number = get_args(field.annotation)
            edges = [b + d for b in limits(number.__metadata__[0]).values() for d in (-1, 0, 1)]
            return [*get_args(word), "no_such_choice", 224, 224.0, 224.5, float("nan"), float("inf"), True, 10**400,
                    *edges, *wrong_types]
        case "options":
            return [default, {}, {"pkl": "models/g.pkl"}, {"n": 1, "f": 0.5, "flag": True, "nothing": None},
                    {"a": [1]}, {"a": {"b": 1}}, {1: "x"}, {"x": float("nan")}, {"x": float("inf")}, [], "text", 0,
                    None, True]
        case "text" | "optional text":
            # a default, names that do not exist, paths outside the project and non-strings
            return [default, "", "no_such_name", "a.b.c", "x" * 300, "/abs/path", "../up", 0, True, 1.5, None,
                    ["x"], {"a": 1}]
    raise AssertionError(kind(field))


CASES = [pytest.param(section, key, field, value, id=f"{section}.{key}={value!r}"[:80])
         for section, key, field in KEYS for value in fixed_values(field, DEFAULTS[section][key])]


def test_the_walk_finds_every_key_of_the_defaults():
    assert {(section, key) for section, key, _ in KEYS} == {
        (section, key) for section, values in DEFAULTS.items() for key in values}
    assert all(kind(field) for _, _, field in KEYS)
    assert parse_params(DEFAULTS)


@pytest.mark.parametrize("section,key,field,value", CASES)
def test_every_key_against_fixed_values(section, key, field, value):
    check(section, key, field, value)


@pytest.mark.parametrize("section,key", [(s, k) for s, k, _ in KEYS])
def test_every_key_is_required(section, key):
    raw = copy.deepcopy(DEFAULTS)
    del raw[section][key]
    with pytest.raises(ParamsError, match=rf"^invalid params: {section}\.{key}: missing key"):
        parse_params(raw)


@pytest.mark.parametrize("section", list(Params.model_fields))
@pytest.mark.parametrize("value", [None, [], 5, "text"])
def test_every_section_must_be_a_mapping(section, value):
    raw = copy.deepcopy(DEFAULTS)
    raw[section] = value
    with pytest.raises(ParamsError, match=rf"^invalid params: {section}( = |: )") as info:
        parse_params(raw)
    assert "\n" not in str(info.value)
    raw[section] = {**DEFAULTS[section], "no_such_key": 1}
    with pytest.raises(ParamsError, match=rf"^invalid params: {section}\.no_such_key: unknown key"):
        parse_params(raw)


NUMBER_KEYS = [(s, k, f) for s, k, f in KEYS if kind(f) == "number"]
OTHER_KEYS = [(s, k, f) for s, k, f in KEYS if kind(f) != "number"]


@st.composite
def number_cases(draw):
    """A number key and a value: near its bounds, anywhere, non-finite, or of another type."""
    section, key, field = draw(st.sampled_from(NUMBER_KEYS))
    bounds = [b for name, b in limits(field).items() if name in ("gt", "ge", "lt", "le")]
    near = [st.integers(min_value=math.floor(b) - 3, max_value=math.ceil(b) + 3) for b in bounds]
    near += [st.floats(min_value=b - 1, max_value=b + 1) for b in bounds]
    value = draw(st.one_of(st.integers(), st.floats(), *near, st.booleans(), st.none(),
                           st.from_regex(r"[g-z]{1,8}", fullmatch=True), st.lists(st.integers(), max_size=3)))
    return section, key, field, value


@st.composite
def other_cases(draw):
    """A choice, list or boolean key and a value: its allowed names in any combination, or anything else."""
    section, key, field = draw(st.sampled_from(OTHER_KEYS))
    names = list(choices(field)) or [True, False]
    if kind(field) == "choice_or_list":
        names += list(names_listed(field))
    if kind(field) == "numbers":
        names = [0, 1, 2, 3, -1, 0.5, 2.5, 1e300, float("nan")]
    value = draw(st.one_of(st.sampled_from(names), st.lists(st.sampled_from(names), max_size=6),
                           st.text(max_size=8), st.integers(), st.none(),
                           st.lists(st.one_of(st.sampled_from(names), st.text(max_size=4)), max_size=4)))
    return section, key, field, value


@FAST
@given(number_cases())
def test_number_keys_against_generated_values(case):
    check(*case)


@FAST
@given(other_cases())
def test_other_keys_against_generated_values(case):
    check(*case)


# --- sizes that memory must hold ----------------------------------------------------------------------------------

# the integer keys whose size no memory bound limits, and what limits them instead
NOT_MEMORY_BOUNDED = {
    "seed": "a seed", "reference_seed": "a seed", "oe_seed": "a seed",
    "epochs": "time, not memory", "oe_epochs": "time, not memory",
    "adversarial_start_epoch": "an epoch", "perceptual_start_epoch": "an epoch",
    "train_per_class": "at most the ID set's smallest class", "test_per_class": "at most the ID set's smallest class",
    "ood_max": "what the OOD sets hold", "oe_max_outliers": "what the outlier set holds",
    "reference_images": "at most the ID training images", "knn_k": "at most the ID training images",
    "vim_dim": "below the classifier's penultimate size", "perceptual_images": "at most generator.batch_size",
    "k": "at most the ID classes", "fixed_k": "capped at the ID classes", "columns": "at most 64",
    "ood_jpeg_quality": "1 to 100",
    "image_size": "at most 256, and the ID training set held whole at that size checked against memory in Params",
    "max_grid": "a side of the pooled feature map, at most the map's own",
    "input_size": "at most 1024, one resize of a batch",
}


def test_every_integer_size_is_bounded_by_memory_or_by_something_named():
    """A new count or size key must say what it costs in memory (or what else bounds it): the class of
    `data.gaussian_count: 1e10`, which passed validation and ended in a 27.9 TiB allocation."""
    for section, key, field in KEYS:
        if field.annotation is int or kind(field) == "choice_or_number":
            assert (memory_cost(field) is None) == (key in NOT_MEMORY_BOUNDED), f"{section}.{key}"


MEMORY_BOUNDED = [pytest.param(section, key, field, id=f"{section}.{key}")
                  for section, key, field in KEYS if memory_cost(field)]


@pytest.mark.parametrize(("section", "key", "field"), MEMORY_BOUNDED)
def test_a_size_memory_cannot_hold_is_refused_in_one_line_before_any_work(section, key, field):
    cost, machine = memory_cost(field), memory_size()
    largest = 1
    while memory_needed(largest * 2, cost) <= machine:  # the largest power of two the machine holds
        largest *= 2
    too_large = largest * 2
    while memory_needed(too_large - 1, cost) > machine:  # the smallest value it does not hold
        too_large = (largest + too_large) // 2 if memory_needed((largest + too_large) // 2, cost) > machine \
            else too_large - 1
        largest = min(largest, too_large - 1)
    raw = copy.deepcopy(DEFAULTS)
    for value, refused in ((too_large, True), (too_large - 1, False), (10 ** 10, True)):
        raw[section][key] = value
        if not refused and not memory_needed(value, cost) <= machine:
            continue
        try:
            parse_params(raw)
            message = ""
        except ParamsError as err:
            message = str(err)
        assert ("of memory" in message) == refused, (value, message)
        if refused:
            assert message.startswith(f"invalid params: {section}.{key} = ") and "\n" not in message, message
            assert "this machine has" in message and message.endswith("; lower it"), message
