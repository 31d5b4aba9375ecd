"""The errors a user can cause and fix: each carries a one-line message saying what is wrong and what to do."""

from __future__ import annotations


class ParamsError(ValueError):
    """params.yaml is missing a key or holds a value outside its allowed range."""


class DataError(ValueError):
    """A dataset that is missing, corrupt, or holds content that cannot be used."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not match the architecture."""


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or inf; training stops instead of producing garbage."""
