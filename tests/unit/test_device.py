"""Device choice (dmr_core.device): CUDA when present, a clear message when asked for and absent."""

import pytest
import torch

from dmr_core.device import autocast, batch_loader, resolve_device


@pytest.mark.parametrize("cuda_present", [True, False])
def test_auto_follows_cuda_and_cpu_overrides_it(monkeypatch, cuda_present):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_present)
    monkeypatch.delenv("DMR_DEVICE", raising=False)
    assert resolve_device().type == ("cuda" if cuda_present else "cpu")
    monkeypatch.setenv("DMR_DEVICE", "auto")
    assert resolve_device().type == ("cuda" if cuda_present else "cpu")
    monkeypatch.setenv("DMR_DEVICE", "CPU")  # the variable is read case-insensitively
    assert resolve_device().type == "cpu"
    assert resolve_device("cpu").type == "cpu"  # an explicit name wins over the variable and over auto


def test_bad_or_unavailable_device_is_refused(monkeypatch):
    monkeypatch.setenv("DMR_DEVICE", "tpu")
    with pytest.raises(ValueError, match="choose auto, cpu or cuda"):
        resolve_device()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_autocast_is_a_no_op_on_cpu():
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_batch_loader_covers_every_row_once_in_a_seeded_order():
    x = torch.arange(10)
    first = [b[0].tolist() for b in batch_loader(x, batch_size=4, shuffle=True, rng=torch.Generator().manual_seed(3))]
    again = [b[0].tolist() for b in batch_loader(x, batch_size=4, shuffle=True, rng=torch.Generator().manual_seed(3))]
    assert first == again and [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10)) and sum(first, []) != list(range(10))
    assert [b[0].tolist() for b in batch_loader(x, batch_size=4, drop_last=True)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
