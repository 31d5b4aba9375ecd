"""Every environment variable and every numeric option of `dmr score` / `dmr export`, against generated values:
each is taken as it says or refused in one line naming it, never a traceback."""

from __future__ import annotations

import io
from decimal import Decimal, InvalidOperation

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from dmr_core import cli
from dmr_core.data.datasets import DataError, cache_dir, data_home
from dmr_core.device import resolve_device
from dmr_core.distributed import requested_processes
from dmr_core.nets.classifier import PRETRAINED_FILES, CheckpointError, pretrained_path

# what an environment variable can hold: any text without NUL, and no surrogate the OS encoding cannot carry
ENV_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=300)
ENV_VALUES = st.one_of(ENV_TEXT, st.integers(-10**30, 10**30).map(str), st.sampled_from(
    ["", " ", "1", " 2 ", "0", "-1", "1.5", "1e3", "²", "٣", "cpu", "CUDA", "auto", "..", "~", "a" * 300,
     "/" + "a" * 300 + "/x", "../shared/data"]))


def one_line(err: BaseException, *starts: str) -> None:
    message = str(err)
    assert "\n" not in message and message.startswith(starts), message


@settings(max_examples=300, deadline=None)
@given(ENV_VALUES)
def test_dmr_nproc_is_a_positive_integer_or_one_line(value):
    try:
        nproc = requested_processes({"DMR_NPROC": value})
    except ValueError as err:
        one_line(err, f"DMR_NPROC={value.strip()!r}")
        stripped = value.strip()
        assert not (stripped.isascii() and stripped.isdigit() and int(stripped) >= 1) and stripped
        return
    assert nproc == (int(value.strip()) if value.strip() else 1) and nproc >= 1


@settings(max_examples=200, deadline=None)
@given(ENV_VALUES)
def test_dmr_device_is_a_device_or_one_line(value):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DMR_DEVICE", value)
        try:
            device = resolve_device()
        except ValueError as err:
            one_line(err, "DMR_DEVICE=")
            return
    assert device.type in ("cpu", "cuda") and (value.lower() in ("auto", "cpu", "cuda") or not value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=ENV_VALUES)
def test_path_variables_name_a_folder_or_say_in_one_line_that_they_do_not(value, tmp_path):
    """DMR_DATA_HOME must be a folder (one line otherwise, even for a name no file system can hold); DMR_CACHE is
    an absolute path; DMR_MODEL_HOME and DMR_DATA_HOME of any value are looked in for weights without an error."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        for name in ("DMR_DATA_HOME", "DMR_CACHE", "DMR_MODEL_HOME"):
            patch.setenv(name, value)
        try:
            home = data_home()
            assert home is None if not value else home.is_dir() and home.is_absolute()
        except DataError as err:
            one_line(err, "DMR_DATA_HOME (now ")
        assert cache_dir().is_absolute()
        # the weights are looked for under DMR_MODEL_HOME and DMR_DATA_HOME, then in the cache (here a folder of
        # the test's, holding a file of the right name and the wrong content): every value ends in that file's
        # one-line refusal, none in an error of the look-up itself
        cache = tmp_path / "cache"
        (cache / "models").mkdir(parents=True, exist_ok=True)
        (cache / "models" / PRETRAINED_FILES["resnet20"]).write_bytes(b"not the weights")
        patch.setenv("DMR_CACHE", str(cache))
        with pytest.raises(CheckpointError) as err:
            pretrained_path("resnet20")
        one_line(err.value, str(cache))


runner = CliRunner()


class FixedScorer:
    """A detector that scores without nets (the options are under test, not the nets)."""

    class_names = ["a"]
    combined = None
    image_size = 32

    def describe(self) -> dict:
        return {"source": "test", "threshold": 0.5, "keep": "0.95", "decision": "dmr", "combined": None}

    def score(self, images: np.ndarray) -> dict[str, np.ndarray]:
        n = len(images)
        return {"predicted": np.zeros(n, int), "confidence": np.ones(n), "dmr_score": np.zeros(n),
                "dmr_is_ood": np.zeros(n, bool), "is_ood": np.zeros(n, bool)}


def _image(path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


OPTION_VALUES = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                          st.text(max_size=20), st.sampled_from(["1e3", "0x10", "5.0", " 7", "", "nan", "inf"]))


def _number(text: str) -> Decimal | None:
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _means_valid(option: str, text: str) -> bool:
    """Whether ``text`` denotes a value the option allows: an integer in [1, MAX_BATCH] (``5.0`` is 5) for
    --batch-size, a share in [0, 1] for --keep."""
    number = _number(text)
    if number is None:
        return False
    if option == "--batch-size":
        return number == number.to_integral_value() and 1 <= number <= cli.MAX_BATCH
    return 0 <= number <= 1


def _plainly_valid(option: str, text: str) -> bool:
    """``text`` as anyone would write a valid value (``int()`` / ``float()`` read it), which must be taken."""
    try:
        value = int(text) if option == "--batch-size" else float(text)
    except ValueError:
        return False
    return _means_valid(option, str(value))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--batch-size", "--keep"]), value=OPTION_VALUES)
def test_score_options_are_taken_or_refused_as_usage_errors(option, value, tmp_path):
    image = tmp_path / "a.png"
    _image(image)
    text = str(value)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "_trained_detector", lambda *a, **k: FixedScorer())
        result = runner.invoke(cli.app, ["score", str(image), f"{option}={text}"])
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, OverflowError))
    if _plainly_valid(option, text):
        assert result.exit_code == 0, (text, result.output)
    elif result.exit_code == 0:  # a lenient spelling taken: it must mean a valid value
        assert _means_valid(option, text), (text, result.output)
    else:
        assert result.exit_code == 2, (text, result.output)
        assert f"Invalid value for '{option}'" in " ".join(result.output.split()), result.output
