"""Reading checkpoints safely (``weights_only=True``) and loading state dicts with errors that name keys."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """``load_state_dict`` that names the missing, unexpected and mis-shaped keys when they differ."""
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    for key in own:  # checkpoints from torch < 0.4.1 carry no BatchNorm step counters
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(own[key])
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict) if state_dict[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise CheckpointError(
            f"{source} does not match {type(model).__name__}: " + "; ".join(parts)
            + ". Is the architecture param right for this checkpoint?"
        )
    model.load_state_dict(state_dict)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by this project (or the pretrained files) safely."""
    return load_checkpoint_with_digest(path)[0]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex: what a downstream artifact records of a checkpoint it was made from."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_checkpoint_with_digest(path: str | Path) -> tuple[dict, str]:
    """A checkpoint and the SHA-256 of the very bytes it was read from (one read: a file replaced meanwhile cannot
    give the payload of one version and the digest of another)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: run `dvc repro` to build it")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err.strerror or err})") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); delete it and re-run") from None
    return payload, hashlib.sha256(data).hexdigest()


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """``torch.save`` through an open file: a full disk then raises OSError (ENOSPC), which the stages report in
    one line, where ``torch.save`` to a file name reports it as a bare RuntimeError."""
    with open(path, "wb") as handle:
        torch.save(payload, handle)
