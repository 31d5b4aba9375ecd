"""dmr_core: the DMR method (Disentangling Marginal Representations for OOD detection) as a library.

Subpackages follow the method's architecture; each module holds one concept and knows nothing about DVC:

- ``data``:       image sets from archives or downloads (``datasets``), atomic artifact writing (``artifacts``)
- ``nets``:       the networks: classifier F, generator pair (E, G), patch critic, rejection head B, and the
                  frozen-classifier representations the head and the detectors read (``features``)
- ``training``:   the one training loop and what trains on it: classifier, generator (VAE, VAE-GAN,
                  perceptual term), rejection head
- ``synthesis``:  OOD images from ID data alone: latent mixing (eqs. 4, 6, 7), fine detail, MIM, KIRBY,
                  and the table of synthesis variants
- ``detectors``:  the table of post-hoc detectors, DMR as a detector, and combined scores
- ``evaluation``: OOD metrics and the report against the paper's tables

The thin files in ``stages/`` wire them to ``params.yaml`` and the artifacts that ``dvc.yaml`` names.
"""

__version__ = "0.1.0"
