"""The sharded inference stages under 2 gloo ranks against 1 process: latents (both routes), ood_synth (with the
residual detail, whose share is drawn over the whole set), and the sets every rank needs whole (a synthesis
baseline's decoded images, F's features of the synthesised images), split over ranks and gathered.

The stages run their real ``main`` in each rank, with chunks and batches small enough that the ranks' shares cut
batches (and a rank may have no share at all); their outputs must equal the one-process outputs byte for byte,
and the one-process outputs must equal what the whole-array writer (``save_zarr``) writes, the format before
sharding."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from dmr_core import distributed
from dmr_core.data.artifacts import open_zarr, save_zarr
from dmr_core.distributed import process_group, rows_in_batches, split_over_ranks
from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.generator import (ConditionalStyleVAE, ConvVAE, decode_to_images, load_generator,
                                     save_generator)
from dmr_core.params import load_params
from dmr_core.synthesis.dmr import SynthConfig, synthesize_ood_images
from dmr_core.synthesis.latent_routes import draw_latents
from dmr_core.training.head import HeadConfig, train_head_on_images
from stages import class_means as class_means_stage
from stages import latents as latents_stage
from stages import ood_synth as ood_synth_stage
from dmr_core.runtime.launcher import FAILURE_START, forward_until_failure
from helpers import ROOT

CLASSES = [f"c{i}" for i in range(10)]
N_TRAIN, ROWS_PER_CHUNK, BATCH = 50, 16, 12   # 4 chunks of 16 rows; batches of 12 straddle them

OVERRIDES = {
    "latents": {"batch_size": BATCH},
    "synth": {"num_samples": 40, "batch_size": BATCH, "detail": "residual_dmr", "detail_fraction": 0.5},
}


def _stored(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _params_file(folder: Path, route: str) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in OVERRIDES.items():
        params[section].update(values)
    params["latents"]["route"] = route
    if route == "sampled":
        params["generator"]["kind"] = "cond_style_vae"
        params["synth"]["detail"] = "none"
        params["latents"]["samples_per_class"] = 3
    path = folder / f"params-{route}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A tiny ID training set, a generator of each kind the routes need and a params file per route."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    save_zarr(folder / "train.zarr", {"images": rng.integers(0, 256, (N_TRAIN, 32, 32, 3), dtype=np.uint8),
                                      "labels": np.arange(N_TRAIN) % 10}, attrs={"class_names": CLASSES})
    torch.manual_seed(0)
    save_generator(ConvVAE(latent_dim=8, base_channels=4).eval(), "conv_vae", folder / "encoded.pt")
    save_generator(ConditionalStyleVAE(latent_dim=8, base_channels=4, num_classes=10).eval(), "cond_style_vae",
                   folder / "sampled.pt")
    for route in ("encoded", "sampled"):
        _params_file(folder, route)
    return folder


def _latents_and_synth(inputs: Path, out: Path, route: str) -> None:
    """Stages latents, class_means (one process's work: it reads every latent) and ood_synth into ``out``."""
    params = load_params(inputs / f"params-{route}.yaml")
    chunks = latents_stage.ROWS_PER_CHUNK, ood_synth_stage.ROWS_PER_CHUNK
    latents_stage.ROWS_PER_CHUNK = ood_synth_stage.ROWS_PER_CHUNK = ROWS_PER_CHUNK
    try:
        latents_stage.main(params, inputs / "train.zarr", inputs / f"{route}.pt", out / "latents.zarr")
        if distributed.is_main():
            class_means_stage.main(params, out / "latents.zarr", out / "class_means.zarr")
        distributed.barrier()
        ood_synth_stage.main(params, inputs / "train.zarr", out / "latents.zarr", out / "class_means.zarr", inputs / f"{route}.pt",
                             out / "ood_synth.zarr", out / "ood_synth.png")
    finally:
        latents_stage.ROWS_PER_CHUNK, ood_synth_stage.ROWS_PER_CHUNK = chunks


def _gathered(inputs: Path, out: Path, route: str) -> None:
    """A synthesis baseline's decoding and the head's features of synthesised images, split and gathered."""
    generator = load_generator(inputs / "encoded.pt")
    latents = np.random.default_rng(2).normal(size=(45, 8)).astype(np.float32)
    decoded = split_over_ranks(lambda w: decode_to_images(generator, w, BATCH), BATCH)(latents)
    torch.manual_seed(0)
    classifier = build_classifier("resnet20").eval()
    id_features = np.random.default_rng(3).normal(size=(30, 64)).astype(np.float16)
    config = HeadConfig(hidden=8, epochs=1, batch_size=16, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.0,
                        schedule="constant", seed=0)
    trained = train_head_on_images(classifier, id_features, decoded, "penultimate", config, batch_size=BATCH)
    if distributed.is_main():
        np.savez(out / "gathered.npz", decoded=decoded, synth_features=trained.synth_features)


SCENARIOS = {"stages": _latents_and_synth, "gathered": _gathered}


def _rank(rank: int, world: int, port: int, scenario: str, inputs: str, out: str, route: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DMR_DEVICE="cpu")
    with process_group():
        SCENARIOS[scenario](Path(inputs), Path(out), route)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(scenario: str, inputs: Path, out: Path, route: str, world: int) -> Path:
    out.mkdir(parents=True)
    if world == 1:
        SCENARIOS[scenario](inputs, out, route)
    else:
        mp.spawn(_rank, args=(world, _free_port(), scenario, str(inputs), str(out), route), nprocs=world, join=True)
    return out


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("route", ["encoded", "sampled"])
def test_sharded_latents_and_ood_synth_equal_one_process_byte_for_byte(inputs, tmp_path, route, world):
    one = _run("stages", inputs, tmp_path / "one", route, 1)
    many = _run("stages", inputs, tmp_path / "many", route, world)
    for name in ("latents.zarr", "ood_synth.zarr"):
        stored = _stored(one / name)
        assert _stored(many / name) == stored and len(stored) > 6, name
        assert not list(many.glob(f".{name}.tmp-*"))
    written = open_zarr(one / "ood_synth.zarr", "ood_synth")
    assert written["images"].shape == (40, 32, 32, 3)
    if route == "encoded":  # the residual detail reached rows of every rank's share
        assert open_zarr(one / "latents.zarr", "latents")["residuals"].shape == (N_TRAIN, 32, 32, 3)
    else:
        # 3 per class: 2 chunks, so with 3 ranks the last has no share (it computes and writes nothing)
        assert open_zarr(one / "latents.zarr", "latents")["latents"].shape[0] == 30


@pytest.mark.parametrize("route", ["encoded", "sampled"])
def test_one_process_writes_what_the_whole_array_writer_wrote(inputs, tmp_path, route):
    """One process keeps the format of before sharding: the same arrays, chunks and attributes, byte for byte."""
    one = _run("stages", inputs, tmp_path / "one", route, 1)
    params = load_params(inputs / f"params-{route}.yaml")
    train = open_zarr(inputs / "train.zarr", "train")
    model = load_generator(inputs / f"{route}.pt")
    p = params.latents
    drawn = draw_latents(model, route, np.asarray(train["images"][:]), np.asarray(train["labels"][:]), 10,
                         batch_size=p.batch_size, per_class=p.samples_per_class, seed=p.seed)
    arrays = {"latents": drawn.latents, "labels": drawn.labels.astype("int16")}
    if drawn.residuals is not None:
        arrays["residuals"] = drawn.residuals
    save_zarr(tmp_path / "whole.zarr", arrays, attrs={"class_names": CLASSES, "route": route},
              rows_per_chunk=ROWS_PER_CHUNK)
    assert _stored(tmp_path / "whole.zarr") == _stored(one / "latents.zarr")

    latents, means = open_zarr(one / "latents.zarr", "l"), open_zarr(one / "class_means.zarr", "m")
    s = params.synth
    synthesised = synthesize_ood_images(
        np.asarray(latents["latents"][:]), np.asarray(latents["labels"][:]), np.asarray(means["means"][:]),
        lambda w: decode_to_images(model, w, s.batch_size), s.to(SynthConfig),
        residuals=latents["residuals"] if "residuals" in latents else None,
        residual_means=means["residual_means"] if "residual_means" in means else None)
    save_zarr(tmp_path / "synth.zarr", {
        "images": synthesised.images, "lambdas": synthesised.lambdas,
        "source_indices": synthesised.sources.astype(np.int32),
        "source_labels": synthesised.source_labels.astype(np.int16)},
        attrs={"method": s.method, "k": s.k, "lambda_dist": s.lambda_dist, "detail": s.detail,
               "detail_fraction": s.detail_fraction, "encoding": "none"},  # the training set here is not JPEG
        rows_per_chunk=ROWS_PER_CHUNK)
    assert _stored(tmp_path / "synth.zarr") == _stored(one / "ood_synth.zarr")


def test_split_and_gathered_sets_equal_one_process(inputs, tmp_path):
    one = np.load(_run("gathered", inputs, tmp_path / "one", "encoded", 1) / "gathered.npz")
    two = np.load(_run("gathered", inputs, tmp_path / "two", "encoded", 2) / "gathered.npz")
    assert one["decoded"].shape == (45, 32, 32, 3) and one["synth_features"].shape == (45, 64)
    assert np.array_equal(two["decoded"], one["decoded"])
    assert np.array_equal(two["synth_features"], one["synth_features"])


def test_rows_in_batches_computes_the_one_process_batches():
    seen = []

    def compute(span: range) -> tuple[np.ndarray, dict]:
        seen.append(span)
        values = np.arange(span.start, span.stop)
        return values, {"twice": 2 * values}

    values, extra = rows_in_batches(compute, range(16, 32), batch_size=12, n=50)
    assert seen == [range(12, 36)]
    assert values.tolist() == list(range(16, 32)) and extra["twice"].tolist() == [2 * v for v in range(16, 32)]


# --- a relaunched stage's progress, passed through as it comes -------------------------------------------------

class _Stream:
    """A worker's stderr arriving in pieces; records how many pieces had been read when each write happened."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces, self.reads = list(pieces), 0

    def read1(self, size: int) -> bytes:
        self.reads += 1
        return self.pieces.pop(0) if self.pieces else b""


class _Out(io.StringIO):
    def __init__(self, stream: _Stream) -> None:
        super().__init__()
        self.stream, self.writes = stream, []

    def write(self, text: str) -> int:
        self.writes.append((self.stream.reads, text))
        return super().write(text)


def test_progress_passes_through_as_it_comes_and_a_failure_is_held_back():
    stream = _Stream([b"\rencode:  50%|##", b"   | 1/2\rencode: 100%", b"|####| 2/2\n",
                      "λ warning\n".encode()[:3], "λ warning\n".encode()[3:],
                      b"error in stage latents: the generator is missing\n", b"E1202 05:50:00.1 launcher failed\n"])
    out = _Out(stream)
    seen, held = forward_until_failure(stream, out)
    assert out.writes[0] == (1, "\r")
    assert (2, "encode:  50%|##   | 1/2\r") in out.writes  # shown once its piece was complete, before the end
    assert (3, "encode: 100%|####| 2/2\n") in out.writes
    assert out.getvalue().endswith("λ warning\n") and "error" not in out.getvalue()
    assert held == "error in stage latents: the generator is missing\nE1202 05:50:00.1 launcher failed\n"
    assert seen == out.getvalue() + held


@pytest.mark.parametrize("line, starts", [
    ("error in stage features: x\n", True), ("Traceback (most recent call last):\n", True),
    ("E1202 05:50:00.123000 launcher\n", True), ("torch.distributed.elastic.ChildFailedError:\n", True),
    ("W1202 05:50:00.1 a warning\n", False), ("Every rank\n", False), ("\rdecode:  5%|\r", False)])
def test_what_starts_a_failure_report(line, starts):
    assert bool(FAILURE_START.search(line)) is starts
