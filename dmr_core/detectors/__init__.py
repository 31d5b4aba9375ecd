"""OOD detectors: the post-hoc table, DMR's rejection head as a detector, and combined scores."""
