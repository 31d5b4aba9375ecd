"""dmr_core: the DMR method (Disentangling Marginal Representations for OOD detection) as a library.

Modules hold one concept each and know nothing about DVC; the thin files in ``stages/`` wire them
to ``params.yaml`` and the artifacts on disk.
"""

__version__ = "0.1.0"
