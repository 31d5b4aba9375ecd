"""Thin DVC stage entry points: read params, call dmr_core, write outputs. Run as ``python -m stages.<name>``."""
