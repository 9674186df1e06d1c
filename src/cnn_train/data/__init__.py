"""Datasets (sources, splits), transforms and batch loaders."""
