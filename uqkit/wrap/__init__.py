"""Wrapping frozen models with uncertainty."""
