"""Stored sets read a batch at a time and results written a chunk at a time: the same values and the same stored
bytes as whole reads and writes, with at most a chunk read at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from dmr_core.data.artifacts import open_zarr, save_zarr, save_zarr_rows, save_zarr_stream
from dmr_core.data.streams import RowWindow, batches, block_rows, row_batches, take_rows, window
from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.features import extract_features, feature_batches
from dmr_core.nets.generator import build_generator, decode_to_images, encode_images, reconstruction_summary
from dmr_core.synthesis.dmr import SynthConfig, synthesised_blocks, synthesize_ood_images
from dmr_core.synthesis.latent_routes import LatentTally, draw_latents, latent_blocks


class CountingReads:
    """A stored array that records how many rows each read asked for."""

    def __init__(self, array) -> None:
        self.array, self.reads = array, []

    def __len__(self) -> int:
        return len(self.array)

    @property
    def chunks(self):
        return self.array.chunks

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    def __getitem__(self, key):
        values = self.array[key]
        self.reads.append(len(values))
        return values


def stored(tmp_path: Path, values: np.ndarray, rows_per_chunk: int, name: str = "set.zarr"):
    save_zarr(tmp_path / name, {"x": values}, rows_per_chunk=rows_per_chunk)
    return open_zarr(tmp_path / name, "a test set")["x"]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10, 64])
def test_batches_of_a_stored_array_equal_slices_and_read_each_chunk_once(tmp_path, batch_size):
    values = np.random.default_rng(0).integers(0, 256, (45, 4, 4, 3), dtype=np.uint8)
    array = CountingReads(stored(tmp_path, values, rows_per_chunk=7))
    got = list(row_batches(array, batch_size, range(3, 41)))
    starts = list(range(3, 41, batch_size))
    assert [start for start, _ in got] == starts
    for start, batch in got:
        np.testing.assert_array_equal(batch, values[start:min(start + batch_size, 41)])
    assert max(array.reads) <= 7  # never more than a chunk at once
    assert len(array.reads) == len(range(0, 41, 7))  # the chunks holding rows 3..40, each read once


def test_batches_of_an_array_are_its_slices_and_a_bad_batch_size_is_refused():
    values = np.arange(10)
    assert [b.tolist() for b in batches(values, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(batches(values[:0], 4)) == []
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(values, 0))


def test_take_rows_reads_only_the_chunks_it_needs_in_any_order(tmp_path):
    values = np.arange(50 * 2).reshape(50, 2)
    array = CountingReads(stored(tmp_path, values, rows_per_chunk=10))
    rows = np.array([42, 3, 3, 47, 0])
    np.testing.assert_array_equal(take_rows(array, rows), values[rows])
    assert len(array.reads) == 2  # chunks 0 and 4
    np.testing.assert_array_equal(take_rows(values, rows), values[rows])
    assert take_rows(array, np.array([], int)).shape == (0, 2)
    with pytest.raises(IndexError, match="50"):
        take_rows(array, np.array([50]))


def test_a_window_reads_only_its_rows(tmp_path):
    values = np.arange(30)
    array = CountingReads(stored(tmp_path, values, rows_per_chunk=8))
    part = window(array, 5, 20)
    assert isinstance(part, RowWindow) and len(part) == 15 and part.shape == (15,)
    np.testing.assert_array_equal(np.concatenate(list(batches(part, 4))), values[5:20])
    np.testing.assert_array_equal(part[[0, 14]], [5, 19])
    assert max(array.reads) <= 8
    assert window(values, 5, 20).base is values  # a NumPy array gives a view


def test_block_rows_is_whole_batches_within_the_limit():
    assert block_rows(1000, 32 * 32 * 3) == 1000 * 87  # 32-px images: every batch of a set in one block
    assert block_rows(1000, 224 * 224 * 3) == 1000  # 224-px images: one batch a block
    assert block_rows(10, 10, limit=55) == 10  # at least one batch


def _stored_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("block", [1, 5, 13, 100])
def test_a_streamed_write_stores_the_bytes_of_a_whole_write(tmp_path, block):
    rng = np.random.default_rng(1)
    arrays = {"images": rng.integers(0, 256, (37, 3, 3, 3), dtype=np.uint8), "labels": rng.integers(0, 9, 37)}
    save_zarr_rows(tmp_path / "whole.zarr", arrays, range(37), 37, {"kind": "test"}, rows_per_chunk=8)
    blocks = ((s, {k: v[s:s + block] for k, v in arrays.items()}) for s in range(0, 37, block))
    save_zarr_stream(tmp_path / "streamed.zarr", blocks, range(37), 37, {"kind": "test"}, rows_per_chunk=8)
    assert _stored_files(tmp_path / "streamed.zarr") == _stored_files(tmp_path / "whole.zarr")


def test_a_streamed_write_stores_a_chunk_equal_to_the_fill_value(tmp_path):
    """A class-sorted set's labels start with a chunk of zeros: it must be stored, or the artifact is damaged."""
    labels = np.repeat(np.arange(3, dtype=np.int16), 8)
    save_zarr_stream(tmp_path / "a.zarr", [(0, {"labels": labels})], range(24), 24, rows_per_chunk=8)
    np.testing.assert_array_equal(open_zarr(tmp_path / "a.zarr", "a")["labels"][:], labels)


def test_a_streamed_write_drops_rows_outside_its_share_and_refuses_a_gap(tmp_path):
    values = np.arange(20)
    # a rank's rows 8..15, computed in batches of 6 widened to whole batches (6..17)
    blocks = [(6, {"x": values[6:12]}), (12, {"x": values[12:18]})]
    save_zarr_stream(tmp_path / "a.zarr", iter(blocks), range(8, 16), 20, rows_per_chunk=8)
    stored_rows = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["x"]
    np.testing.assert_array_equal(stored_rows[8:16], values[8:16])
    with pytest.raises(ValueError, match="skip rows 8..11"):
        save_zarr_stream(tmp_path / "b.zarr", iter([(12, {"x": values[12:20]})]), range(8, 20), 20)
    with pytest.raises(ValueError, match="end at row 12"):
        save_zarr_stream(tmp_path / "c.zarr", iter([(8, {"x": values[8:12]})]), range(8, 20), 20)
    assert not (tmp_path / "b.zarr").exists() and not (tmp_path / "c.zarr").exists()  # nothing partial left


def test_features_of_a_stored_set_equal_those_of_the_array_read_a_chunk_at_a_time(tmp_path):
    torch.manual_seed(0)
    model = build_classifier("resnet20").eval()
    images = np.random.default_rng(2).integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)
    array = CountingReads(stored(tmp_path, images, rows_per_chunk=8))
    whole = extract_features(model, images, batch_size=5)
    streamed = extract_features(model, array, batch_size=5)
    for key in whole:
        np.testing.assert_array_equal(streamed[key], whole[key])
    assert max(array.reads) <= 8
    starts = [start for start, _ in feature_batches(model, images, batch_size=5, rows=range(5, 20))]
    assert starts == [5, 10, 15]


def test_latent_blocks_joined_equal_the_latents_of_the_whole_set_and_tally_the_residual(tmp_path):
    torch.manual_seed(0)
    model = build_generator("conv_vae", latent_dim=16, base_channels=8).eval()
    images = np.random.default_rng(3).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(21) % 3
    array = stored(tmp_path, images, rows_per_chunk=4)
    whole = draw_latents(model, "encoded", images, labels, 3, batch_size=5)
    np.testing.assert_array_equal(whole.latents, encode_images(model, images, batch_size=5))
    tally = LatentTally()
    blocks = list(map(tally.add, latent_blocks(model, "encoded", array, labels, 3, batch_size=5, rows=range(7, 21))))
    assert [start for start, _ in blocks] == [7, 10, 15, 20]
    np.testing.assert_array_equal(np.concatenate([b["latents"] for _, b in blocks]), whole.latents[7:])
    np.testing.assert_array_equal(np.concatenate([b["residuals"] for _, b in blocks]), whole.residuals[7:])
    assert tally.count == whole.residuals[7:].size and tally.latent_shape == (16,)
    assert tally.squares == pytest.approx(float(np.square(whole.residuals[7:].astype(np.float64)).sum()))


def test_reconstruction_summary_streams_the_error_of_the_whole_set(tmp_path):
    torch.manual_seed(0)
    model = build_generator("conv_vae", latent_dim=16, base_channels=8).eval()
    images = np.random.default_rng(4).integers(0, 256, (19, 32, 32, 3), dtype=np.uint8)
    recon = decode_to_images(model, encode_images(model, images, batch_size=4), batch_size=4)
    mse = float(np.mean((recon.astype(np.float64) - images) ** 2) / 255.0**2)
    got_mse, psnr, shown = reconstruction_summary(model, stored(tmp_path, images, 5), show=np.array([18, 0]),
                                                  batch_size=4)
    assert got_mse == pytest.approx(mse, rel=1e-12) and psnr == pytest.approx(10 * np.log10(1 / mse))
    np.testing.assert_array_equal(shown, recon[[18, 0]])


def test_synthesised_blocks_equal_the_whole_set_at_any_whole_number_of_batches():
    rng = np.random.default_rng(5)
    latents, labels = rng.normal(size=(30, 6)).astype(np.float32), np.arange(30) % 3
    means = np.stack([latents[labels == c].mean(0) for c in range(3)])
    residuals = rng.integers(-20, 20, (30, 2, 2, 3)).astype(np.int16)
    residual_means = np.stack([residuals[labels == c].mean(0) for c in range(3)]).astype(np.float32)

    def decode(batch: np.ndarray) -> np.ndarray:
        return np.clip(batch[:, :1, None, None] * 40 + 128, 0, 255).repeat(2, 1).repeat(2, 2).repeat(3, 3)\
            .astype(np.uint8)

    config = SynthConfig(method="dmr_mlm", k=2, lambda_dist="uniform", lambda_min=1.0, lambda_max=3.0, normalise=False,
                         detail="residual", detail_fraction=0.5, num_samples=40, batch_size=6, seed=0)
    whole = synthesize_ood_images(latents, labels, means, decode, config, residuals, residual_means)
    for block in (6, 12, 36):
        parts = list(synthesised_blocks(latents, labels, means, decode, config, residuals, residual_means,
                                        rows=range(4, 33), block=block))
        assert parts[0][0] == 4
        for field in ("images", "lambdas", "sources", "source_labels"):
            np.testing.assert_array_equal(np.concatenate([getattr(p, field) for _, p in parts]),
                                          getattr(whole, field)[4:33])
    with pytest.raises(ValueError, match="whole number of batches"):
        list(synthesised_blocks(latents, labels, means, decode, config, residuals, residual_means, block=7))
