"""Experiment profiles: one YAML file per configuration of the paper's tables (``<name>.yaml``), read and composed
over params.yaml by ``compose``."""
