"""Pallas kernels, each beside the plain path it replaces and tested against it."""
