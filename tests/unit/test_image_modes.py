"""Every PIL mode an image file can decode to is brought to 8-bit RGB by what its values mean (16-bit depth, float
intensities, transparency), in the data stage and in `dmr score` alike; values a mode does not define are refused
as ``out_of_range``, never clipped."""

import io
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from dmr_core.data.datasets import load_ood_set
from dmr_core.data.sources import decode_image
from dmr_core.serving.inputs import UnreadableImage
from dmr_core.serving.inputs import decode_image as score_decode

SIZE = 32
SHAPE = (SIZE, SIZE)


def encoded(image: Image.Image, file_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=file_format)
    return buffer.getvalue()


def decoded(payload: bytes) -> np.ndarray:
    image, _, reason = decode_image(payload, SIZE)
    assert reason is None, reason
    return image.astype(int)


def gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1).astype(int)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, SHAPE))
def test_a_16_bit_image_decodes_as_the_8_bit_image_it_widens(eight_bit):
    """v·257 is v at 16 bits (0 → 0, 255 → 65535): PNG and TIFF files holding it decode to the 8-bit image."""
    sixteen = eight_bit.astype(np.uint16) * 257
    assert Image.open(io.BytesIO(encoded(Image.fromarray(sixteen)))).mode == "I;16"
    assert np.array_equal(decoded(encoded(Image.fromarray(sixteen))), gray(eight_bit))
    assert np.array_equal(decoded(encoded(Image.fromarray(sixteen), "TIFF")), gray(eight_bit))
    as_int32 = Image.fromarray(sixteen.astype(np.int32))  # mode I
    assert as_int32.mode == "I"
    assert np.array_equal(decoded(encoded(as_int32, "TIFF")), gray(eight_bit))


def test_a_16_bit_gradient_keeps_its_levels():
    """The reported case: a 0–65535 ramp became 99.6 % white; scaled by its depth, each 8-bit level is about
    equally common and every value is within half a level of v / 257."""
    ramp = np.linspace(0, 65535, SIZE * SIZE).round().astype(np.uint16).reshape(SHAPE)
    image = decoded(encoded(Image.fromarray(ramp)))[..., 0]
    assert (image == 255).mean() < 0.01
    assert np.abs(image - ramp / 257).max() <= 0.5
    assert np.all(np.diff(image.ravel()) >= 0)


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, SHAPE))
def test_a_float_image_is_read_as_intensities_in_0_1(eight_bit):
    as_float = Image.fromarray((eight_bit / 255).astype(np.float32))
    assert as_float.mode == "F"
    assert np.array_equal(decoded(encoded(as_float, "TIFF")), gray(eight_bit))


@pytest.mark.parametrize("values", [
    np.full(SHAPE, 2.0, np.float32),                      # 0–255 floats, or any scale but [0, 1]
    np.full(SHAPE, -0.5, np.float32),
    np.where(np.eye(SIZE, dtype=bool), np.nan, 0.5).astype(np.float32),
    np.full(SHAPE, 70000, np.int32),                      # above 16 bits
    np.full(SHAPE, -1, np.int32),
])
def test_values_a_mode_does_not_define_are_refused_not_clipped(values, tmp_path):
    payload = encoded(Image.fromarray(values), "TIFF")
    assert decode_image(payload, SIZE) == (None, [], "out_of_range")
    with pytest.raises(UnreadableImage, match="mode does not define"):
        score_decode(payload)
    with tarfile.open(tmp_path / "set.tar", "w") as tar:  # the data stage counts it, as any skipped image
        for name, data in {"a.tif": payload, "b.png": encoded(Image.new("RGB", SHAPE))}.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    loaded = load_ood_set(str(tmp_path / "set.tar"))
    assert len(loaded.images) == 1 and loaded.skipped["out_of_range"] == 1


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, (SIZE, SIZE, 3)), st.integers(0, 255))
def test_transparency_is_composited_onto_black_whatever_colour_it_hides(rgb, alpha):
    """An opaque RGBA image decodes to its RGB; lowering alpha scales every colour by it, so a transparent pixel
    is black whatever colour the file stores under it."""
    rgba = np.concatenate([rgb, np.full((SIZE, SIZE, 1), alpha, np.uint8)], axis=-1)
    out = decoded(encoded(Image.fromarray(rgba, "RGBA")))
    assert np.abs(out - rgb.astype(int) * alpha / 255).max() <= 0.5
    if alpha == 255:
        assert np.array_equal(out, rgb)
    la = np.stack([rgb[..., 0], np.full(SHAPE, alpha, np.uint8)], axis=-1)
    assert np.abs(decoded(encoded(Image.fromarray(la, "LA"))) - gray(rgb[..., 0]) * alpha / 255).max() <= 0.5


def test_a_palette_image_with_a_transparent_colour_shows_it_black():
    palette = Image.new("P", SHAPE, 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    palette.paste(0, (0, 0, SIZE // 2, SIZE))              # the left half red, declared transparent
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    out = decoded(buffer.getvalue())
    assert np.all(out[:, :SIZE // 2] == 0) and np.all(out[:, SIZE // 2:] == [0, 0, 255])
    opaque = io.BytesIO()
    palette.save(opaque, format="PNG")
    assert np.all(decoded(opaque.getvalue())[:, :SIZE // 2] == [255, 0, 0])


def test_score_and_the_data_stage_decode_alike():
    ramp = np.linspace(0, 65535, 48 * 40).astype(np.uint16).reshape(40, 48)  # another size: resized as well
    payload = encoded(Image.fromarray(ramp))
    assert np.array_equal(score_decode(payload), decode_image(payload, SIZE)[0])
