"""Using a trained run on new images: reading image files, folders and tars (``inputs``), finding a run's
artifacts (``run``), the trained detector (``detector``), its self-contained TorchScript export (``export``) and
batched scoring with its output files (``scoring``)."""
