"""Datasets: the on-disk format, validation, importers and the built-in benchmark generator."""
