"""Image sets (ID and OOD) and the artifacts the pipeline writes."""
