"""The ID data's encoding, read off its files and applied to other images, and the summaries that keep the
encoding-matched and the as-stored OOD sets apart."""

import io
from collections import Counter

import numpy as np
import pytest
from helpers import image_bytes
from PIL import Image

from dmr_core.data.encoding import (AS_STORED_SUFFIX, JpegEncoding, dominant_encoding, encode_like, jpeg_encoding_of,
                                    jpeg_round_trip, resolve_encoding, stored_encoding)
from dmr_core.evaluation.metrics import evaluate_scores


def jpeg_bytes(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def smooth_image(seed: int, size: int = 32) -> np.ndarray:
    """A natural-looking image (smooth colour gradients plus mild noise), which JPEG changes little."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform())) for _ in range(3)]
    image = 127.5 + 100 * np.stack(channels, -1) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("quality", [10, 50, 75, 90, 95])
@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_the_quality_and_subsampling_of_a_jpeg_are_read_exactly(quality, subsampling):
    encoding = jpeg_encoding_of(jpeg_bytes(smooth_image(0), quality=quality, subsampling=subsampling))
    assert encoding is not None
    assert (encoding.quality, encoding.subsampling) == (quality, subsampling)
    assert encoding == JpegEncoding.of_quality(quality, subsampling)


def test_custom_tables_are_kept_without_a_quality():
    tables = [[(i % 7) + 2 for i in range(64)], [(i % 5) + 3 for i in range(64)]]
    encoding = jpeg_encoding_of(jpeg_bytes(smooth_image(1), qtables=tables, subsampling=0))
    assert encoding.quality is None
    assert [list(t) for t in encoding.qtables] == tables
    assert "custom" in encoding.describe()


def test_other_files_have_no_encoding():
    assert jpeg_encoding_of(image_bytes(smooth_image(2))) is None
    assert jpeg_encoding_of(b"\xff\xd8 not really a jpeg") is None
    assert jpeg_encoding_of(b"") is None


def test_a_round_trip_with_the_files_own_encoding_is_the_files_own_compression():
    """Re-encoding a decoded JPEG with its own tables changes it little; the same encoding of the lossless
    original moves it as far as the file's compression did."""
    original = np.stack([smooth_image(s) for s in range(8)])
    payloads = [jpeg_bytes(image, quality=75) for image in original]
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in payloads])
    encoding = jpeg_encoding_of(payloads[0])
    again = jpeg_round_trip(decoded, encoding)
    matched = jpeg_round_trip(original, encoding)
    assert np.array_equal(matched, decoded)  # the same encoder and tables: the files' pixels exactly
    assert np.abs(again.astype(int) - decoded).mean() < 0.5 * np.abs(original.astype(int) - decoded).mean()
    assert again.dtype == np.uint8 and again.shape == decoded.shape


def test_the_encoding_of_a_set_is_its_majority():
    q75, q90 = JpegEncoding.of_quality(75), JpegEncoding.of_quality(90)
    assert dominant_encoding(Counter({q75: 6, q90: 1, None: 3})) == (q75, 0.6)
    assert dominant_encoding(Counter({q75: 4, None: 6})) == (None, 0.0)
    assert dominant_encoding(Counter()) == (None, 0.0)


def test_settings_resolve_against_the_id_encoding():
    id_encoding = JpegEncoding.of_quality(75, subsampling=1)
    assert resolve_encoding("auto", id_encoding) is id_encoding
    assert resolve_encoding("match_id", None) is None
    assert resolve_encoding("none", id_encoding) is None
    assert resolve_encoding("jpeg", id_encoding, 40) == JpegEncoding.of_quality(40, subsampling=1)
    assert resolve_encoding("jpeg", None, 40) == JpegEncoding.of_quality(40, subsampling=2)
    with pytest.raises(ValueError):
        resolve_encoding("webp", id_encoding)


def test_the_recorded_encoding_round_trips_through_attributes():
    encoding = JpegEncoding.of_quality(75)
    assert stored_encoding({"encoding": encoding.as_dict()}) == encoding
    assert stored_encoding({"encoding": None}) is None and stored_encoding({}) is None
    images = np.stack([smooth_image(3)])
    assert encode_like(images, None) is images


def test_as_stored_sets_are_summarised_apart():
    rng = np.random.default_rng(0)
    id_scores = rng.normal(0, 1, 200)
    ood = {"tinyimagenet_part": rng.normal(0.5, 1, 100), "icons": rng.normal(2, 1, 100),
           "gaussian": rng.normal(4, 1, 100)}
    ood.update({name + AS_STORED_SUFFIX: scores + 3 for name, scores in list(ood.items())})
    result = evaluate_scores(id_scores, ood)
    assert result["near_mean"]["AUROC"] == result["tinyimagenet_part"]["AUROC"]
    assert result["far_mean"]["AUROC"] == pytest.approx((result["icons"]["AUROC"] + result["gaussian"]["AUROC"]) / 2,
                                                        abs=1e-3)
    assert result["near_far_mean"]["AUROC"] == pytest.approx(
        (result["near_mean"]["AUROC"] + result["far_mean"]["AUROC"]) / 2, abs=1e-3)
    # the matched mean is over the three matched sets only; the shifted as-stored copies score higher
    assert result["mean"]["AUROC"] == pytest.approx(
        np.mean([result[n]["AUROC"] for n in ("tinyimagenet_part", "icons", "gaussian")]), abs=1e-3)
    assert result["mean" + AS_STORED_SUFFIX]["AUROC"] > result["mean"]["AUROC"]
    assert result["near_mean" + AS_STORED_SUFFIX]["AUROC"] == result["tinyimagenet_part" + AS_STORED_SUFFIX]["AUROC"]
