"""Inference engines (one module each) and the `Posterior` they produce."""

from uqkit.inference.posterior import Posterior

__all__ = ["Posterior"]
