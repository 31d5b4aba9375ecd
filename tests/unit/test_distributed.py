"""Data-parallel training and sharded inference (dmr_core.distributed): 2 gloo ranks on the CPU against 1 process.

Sharded inference must equal the one-process result byte for byte. Training with 2 ranks follows the same maths
(each rank's share of every global batch, gradients averaged weighted by share) but sums floats in another order;
without BatchNorm (the rejection head) the weights agree to float32 rounding, with BatchNorm (classifier,
generator) each rank normalises by its own half-batch statistics, so they agree only loosely: the tolerances below
are measured, with a margin."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import zarr

from dmr_core import distributed
from dmr_core.runtime import machine
from dmr_core.data.artifacts import open_zarr, shared_output, write_zarr_rows
from dmr_core.distributed import (
    batch_aligned,
    chunk_shard,
    process_group,
    relaunch_command,
    requested_processes,
    shard_range,
    should_relaunch,
)
from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.features import extract_feature_rows
from dmr_core.nets.generator import ConvVAE
from dmr_core.training.classifier import ClassifierTrainingConfig, train_classifier
from dmr_core.training.generator import GeneratorTrainingConfig, train_generator
from dmr_core.training.head import train_rejection_head

sys.path.insert(0, str(Path(__file__).parent))
from helpers import HEAD, ROOT, blobs, project_pythonpath  # noqa: E402

CPU = torch.device("cpu")


# --- shard ranges and the relaunch decision -------------------------------------------------------------------

@pytest.mark.parametrize("n, world", [(0, 2), (1, 2), (7, 2), (10, 3), (100, 4), (5, 1)])
def test_shard_ranges_are_contiguous_disjoint_and_cover_everything(n, world):
    shards = [shard_range(n, world, r) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards[-1].stop == n and shards[0].start == 0
    assert [len(s) for s in shards] == sorted((len(s) for s in shards), reverse=True)  # rank 0 never goes short


def test_chunk_shards_are_whole_chunks():
    n, rows = 50, 16  # chunks [0,16) [16,32) [32,48) [48,50)
    shards = [chunk_shard(n, rows, 2, r) for r in range(2)]
    assert shards == [range(0, 32), range(32, 50)]
    assert [chunk_shard(10, 16, 2, r) for r in range(2)] == [range(0, 10), range(10, 10)]  # one chunk: one writer
    assert chunk_shard(0, 16, 2, 1) == range(0, 0)


def test_batch_aligned_widens_to_the_one_process_batches():
    assert batch_aligned(range(16, 32), 12, 50) == range(12, 36)
    assert batch_aligned(range(32, 50), 12, 50) == range(24, 50)
    assert batch_aligned(range(0, 0), 12, 50) == range(0, 0)


def test_relaunch_only_when_asked_and_not_yet_a_worker():
    assert not should_relaunch({})
    assert not should_relaunch({"DMR_NPROC": "1"})
    assert should_relaunch({"DMR_NPROC": "2"})
    assert not should_relaunch({"DMR_NPROC": "2", "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="DMR_NPROC='two'"):
        requested_processes({"DMR_NPROC": "two"})
    with pytest.raises(ValueError, match="DMR_NPROC='0'"):
        requested_processes({"DMR_NPROC": "0"})
    command = relaunch_command("stages.features", ["--out", "x"], 2)
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "stages.features", "--out", "x"]


@pytest.mark.parametrize(("nproc", "cores", "memory", "allowed"), [
    (2, 2, 23 * 2**30, True), (3, 2, 23 * 2**30, False), (64, 2, 23 * 2**30, False),  # cores bind
    (4, 16, int(1.2 * 2**30), False), (2, 16, int(1.2 * 2**30), True),               # memory binds
    (8, 8, None, True),                                                               # memory unknown
])
def test_process_count_capped_by_cores_and_memory(nproc, cores, memory, allowed):
    if allowed:
        distributed.check_process_count(nproc, cores=cores, memory=memory)
        return
    with pytest.raises(ValueError) as refused:
        distributed.check_process_count(nproc, cores=cores, memory=memory)
    message = str(refused.value)
    limit = min(cores, max(1, memory // distributed.RANK_MEMORY_BYTES))
    assert f"DMR_NPROC={nproc} " in message and f"{cores} cores" in message
    assert "GiB of available memory" in message
    assert message.endswith(f"set DMR_NPROC to {limit} or less") and "\n" not in message


def test_available_memory_is_the_lower_of_the_kernel_and_the_cgroup(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:  24000000 kB\nMemAvailable:  8000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert machine.available_memory(tmp_path / "meminfo", cgroup) == 8000000 * 1024  # no limit file
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("100\n")
    assert machine.available_memory(tmp_path / "meminfo", cgroup) == 8000000 * 1024
    (cgroup / "memory.max").write_text(f"{3 * 2**30}\n")
    (cgroup / "memory.current").write_text(f"{2**30}\n")
    assert machine.available_memory(tmp_path / "meminfo", cgroup) == 2 * 2**30
    assert machine.available_memory(tmp_path / "none", tmp_path / "none") is None


def test_one_process_runs_no_process_group():
    with process_group():
        assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()


def test_threads_split_between_ranks():
    assert distributed.threads_per_rank(2, cores=2) == 1
    assert distributed.threads_per_rank(1, cores=2) == 2
    assert distributed.threads_per_rank(4, cores=2) == 1


# --- scenarios, run in one process and in 2 gloo ranks ---------------------------------------------------------

def _head(tmp: Path):
    id_features, ood_features = blobs(200, 8)
    head, history = train_rejection_head(id_features, ood_features, HEAD, device=CPU)
    return {k: v.numpy() for k, v in head.state_dict().items()}, history.loss


def _classifier(tmp: Path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), np.arange(16) % 10
    torch.manual_seed(0)
    model = build_classifier("resnet20")
    config = ClassifierTrainingConfig(epochs=1, batch_size=8, lr=0.01, momentum=0.9, weight_decay=0.0, seed=0)
    history = train_classifier(model, images, labels, config, device=CPU)
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}, history.loss


def _generator(tmp: Path):
    images = (np.random.default_rng(0).random((32, 32, 32, 3)) * 255).astype(np.uint8)
    torch.manual_seed(0)
    model = ConvVAE(latent_dim=8, base_channels=4)
    config = GeneratorTrainingConfig(epochs=2, batch_size=16, lr=1e-3, beta_kl=0.1, seed=3, adversarial_weight=0.5,
                                     adversarial_start_epoch=1)
    history = train_generator(model, images, config, device=CPU)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, history.loss


def _features(tmp: Path):
    """What the features stage does, on 50 random images in chunks of 16 and batches of 12 (shards cut batches)."""
    images = np.random.default_rng(1).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = build_classifier("resnet20").eval()
    out = tmp / "features.zarr"
    with shared_output(out) as written:
        if distributed.is_main():
            zarr.open_group(str(written), mode="w")
        for key, n in [("id_train", 50), ("ood/empty", 0)]:
            rows = chunk_shard(n, 16)
            arrays = extract_feature_rows(model, images[:n], rows, batch_size=12)
            arrays["labels"] = (np.arange(n) % 10)[rows.start:rows.stop].astype("int16")
            write_zarr_rows(written, key, arrays, rows, n, rows_per_chunk=16)
    return out, None


SCENARIOS = {"head": _head, "classifier": _classifier, "generator": _generator, "features": _features}


def _rank(rank: int, world: int, port: int, scenario: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), DMR_DEVICE="cpu")
    with process_group():
        result = SCENARIOS[scenario](Path(tmp))
    if rank == 0 and scenario != "features":
        torch.save(result, Path(tmp) / "result.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(scenario: str, tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank, args=(2, _free_port(), scenario, str(tmp)), nprocs=2, join=True)
    if scenario == "features":
        return tmp / "features.zarr", None
    return torch.load(tmp / "result.pt", weights_only=False)


def _stored(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sharded_features_equal_one_process_byte_for_byte(tmp_path):
    one, _ = _features(tmp_path / "one")
    two, _ = run_two_ranks("features", tmp_path / "two")
    assert _stored(two) == _stored(one) and len(_stored(one)) > 8
    group = open_zarr(two, "features")
    assert group["id_train"]["logits"].shape == (50, 10) and group["ood/empty"]["labels"].shape == (0,)
    assert not list(two.parent.glob(".features.zarr.tmp-*"))


# measured (1 epoch, resnet20, 16 images in batches of 8; VAE-GAN 2 epochs): head max |Δw| 4.5e-8, loss 1e-7 relative
# (float32 rounding; no BatchNorm, no dropout); classifier max |Δw| 0.009, loss 2.8%; generator max |Δw| 0.044 (of
# weights up to 6), loss 0.06%; classifier and generator differ by their per-rank BatchNorm statistics (and the
# generator by its per-rank adversarial balance weight). Bounds: about 3× the measured gaps.
# (max |Δ weight|, max relative Δ epoch loss)
TOLERANCE = {"head": (1e-5, 1e-5), "classifier": (0.03, 0.1), "generator": (0.15, 0.01)}


@pytest.mark.parametrize("scenario", ["head", "classifier", "generator"])
def test_two_rank_training_matches_one_process(tmp_path, scenario):
    weights_one, history_one = SCENARIOS[scenario](tmp_path)
    weights_two, history_two = run_two_ranks(scenario, tmp_path / "two")
    assert weights_two.keys() == weights_one.keys()
    worst = max(float(np.max(np.abs(weights_two[k].astype(np.float64) - weights_one[k]), initial=0.0))
                for k in weights_one)
    moved = max(float(np.max(np.abs(weights_one[k].astype(np.float64)), initial=0.0)) for k in weights_one)
    loss_gap = float(np.max(np.abs(np.subtract(history_two, history_one)) / np.abs(history_one)))
    print(f"{scenario}: max |Δ weight| {worst:.3g} (largest weight {moved:.3g}); max relative Δ loss {loss_gap:.3g}")
    assert worst <= TOLERANCE[scenario][0], (scenario, worst)
    assert loss_gap <= TOLERANCE[scenario][1], (scenario, loss_gap)


# --- a stage relaunching itself under torchrun -----------------------------------------------------------------


def _stage(cwd: Path, nproc: int, *argv: str):
    import subprocess
    env = {**os.environ, "DMR_NPROC": str(nproc), "DMR_DEVICE": "cpu",
           "PYTHONPATH": project_pythonpath()}
    return subprocess.run([sys.executable, "-m", "stages.features", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_features_stage_with_two_processes_equals_one(tmp_path):
    from dmr_core.data.artifacts import save_zarr
    from dmr_core.nets.classifier import save_classifier
    from dmr_core.params import load_params
    from stages import features as features_stage
    from dmr_core.data.layout import write_sets_index

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    datasets, rng = tmp_path / "datasets", np.random.default_rng(0)
    classes = [f"c{i}" for i in range(10)]
    for name, n in [("id_train", 24), ("id_test", 8), ("ood/noise", 6)]:
        save_zarr(datasets / f"{name}.zarr", {"images": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                                              "labels": np.arange(n) % 10}, attrs={"class_names": classes})
    write_sets_index(datasets, classes, ["noise"])
    torch.manual_seed(0)
    save_classifier(build_classifier("resnet20"), "resnet20", tmp_path / "classifier.pt", class_names=classes)
    features_stage.main(load_params(tmp_path / "params.yaml"), datasets, tmp_path / "classifier.pt",
                        tmp_path / "one.zarr")  # one process, in this one
    two = _stage(tmp_path, 2, "--datasets", "datasets", "--classifier", "classifier.pt", "--out", "two.zarr")
    assert two.returncode == 0, two.stderr[-2000:]
    assert _stored(tmp_path / "two.zarr") == _stored(tmp_path / "one.zarr")
    assert two.stdout.count("features id_train: 24 images") == 1  # rank 0 alone prints

    failed = _stage(tmp_path, 2, "--datasets", "datasets", "--classifier", "missing.pt", "--out", "three.zarr")
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and len(lines) == 1 and lines[0].startswith("error in stage features:"), lines
    assert not (tmp_path / "three.zarr").exists()


def _features_project(tmp_path: Path, train_images: int) -> dict[str, str]:
    """A project in ``tmp_path`` for stage features (random ID sets, an untrained resnet20); returns the
    environment that runs it in 2 torchrun workers."""
    from dmr_core.data.artifacts import save_zarr
    from dmr_core.data.layout import write_sets_index
    from dmr_core.nets.classifier import save_classifier

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    datasets, rng = tmp_path / "datasets", np.random.default_rng(0)
    classes = [f"c{i}" for i in range(10)]
    for name, n in [("id_train", train_images), ("id_test", 8)]:
        save_zarr(datasets / f"{name}.zarr", {"images": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                                              "labels": np.arange(n) % 10}, attrs={"class_names": classes})
    write_sets_index(datasets, classes, [])
    torch.manual_seed(0)
    save_classifier(build_classifier("resnet20"), "resnet20", tmp_path / "classifier.pt", class_names=classes)
    return {**os.environ, "DMR_NPROC": "2", "DMR_DEVICE": "cpu",
            "PYTHONPATH": project_pythonpath()}


def test_interrupted_relaunched_stage_says_so_once_and_leaves_no_output(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while 2 torchrun workers write the features:
    the stage exits 130 with the one-line interruption notice, and neither the output nor its temporary copy
    is left behind."""
    import signal
    import subprocess
    import time

    env = _features_project(tmp_path, 6000)  # enough images to take several seconds
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.features", "--datasets", "datasets", "--classifier", "classifier.pt",
         "--out", "out.zarr"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.zarr.tmp-*")) and time.time() < deadline:  # the workers are writing
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "stage features interrupted; no partial output was kept", stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    time.sleep(1)  # workers may still be removing files
    assert not (tmp_path / "out.zarr").exists() and not list(tmp_path.glob(".out.zarr.tmp-*"))


def test_more_processes_than_cores_refused_in_one_line_before_any_work(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    too_many = machine.usable_cores() + 1
    result = _stage(tmp_path, too_many, "--datasets", "datasets", "--classifier", "classifier.pt",
                    "--out", "out.zarr")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error in stage features: DMR_NPROC={too_many} is more processes than"), lines
    assert "torch.distributed" not in result.stderr and not list(tmp_path.glob("*out.zarr*"))


def _processes_in(folder: Path) -> dict[int, str]:
    """pid → command line of the processes whose working directory is ``folder`` (a stage and its workers)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and Path(os.readlink(entry / "cwd")) == folder:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
@pytest.mark.parametrize("killed", ["stage", "torchrun", "worker"])
def test_a_killed_process_leaves_no_worker_running_and_says_so_in_one_line(tmp_path, killed):
    """SIGKILL (as the kernel's OOM killer sends it) to the stage process, to torchrun, or to one worker while 2
    torchrun workers write the features: every process of the stage ends within seconds instead of running on
    orphaned, and where the stage process lives it says what happened in one line."""
    import subprocess
    import time

    env = _features_project(tmp_path, 40000)  # a minute of work, so that the workers outlive a kill
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.features", "--datasets", "datasets", "--classifier", "classifier.pt",
         "--out", "out.zarr"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folder = tmp_path.resolve()
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.zarr.tmp-*")) and time.time() < deadline:  # the workers are writing
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    running = _processes_in(folder)
    torchrun = [pid for pid, command in running.items() if "torch.distributed.run" in command]
    workers = [pid for pid in running if pid not in torchrun and pid != process.pid]
    assert len(torchrun) == 1 and len(workers) == 2, running
    if killed == "stage":
        process.kill()
    else:
        os.kill(torchrun[0] if killed == "torchrun" else workers[-1], 9)
    _, stderr = process.communicate(timeout=60)
    deadline = time.time() + 15  # torchrun gives its workers 5 s to stop before it kills them
    while _processes_in(folder) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_in(folder) == {}
    if killed != "stage":
        lines = stderr.strip().splitlines()
        assert process.returncode != 0 and lines[-1].startswith("error in stage features:"), stderr[-3000:]
        assert "killed" in lines[-1] and "DMR_NPROC" in lines[-1], lines[-1]
