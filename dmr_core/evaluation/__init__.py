"""OOD metrics and the report that sets them beside the paper's tables."""
