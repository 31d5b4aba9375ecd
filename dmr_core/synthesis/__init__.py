"""Synthesising OOD training images from ID data alone: DMR (eqs. 4, 6, 7) and the baselines it is compared with."""
