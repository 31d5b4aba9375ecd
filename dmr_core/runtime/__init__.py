"""How a stage runs: its command line, the one-line error path, and the torchrun relaunch under ``DMR_NPROC``.

Nothing here changes what a stage writes, so these modules are not stage deps in dvc.yaml."""
