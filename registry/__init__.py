"""Serve many named PyTorch models over HTTP from one YAML manifest."""

__version__ = "0.1.0"

__all__ = ["__version__"]
