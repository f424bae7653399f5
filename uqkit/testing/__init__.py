"""Reusable statistical checks for engines and metrics."""
