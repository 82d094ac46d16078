"""Test helper: the twin surveyed as the survey node does it (``evals/surveyed.py``)."""

from autoscope.evals.surveyed import Surveyed, surveyed

__all__ = ["Surveyed", "surveyed"]
