"""Errors the data pipeline raises; both carry a message that says what to fix."""

from __future__ import annotations


class SampleError(Exception):
    """One sample cannot be used (missing file, wrong size, no valid pixels, ...).

    The mixed dataset reports it once and substitutes another sample, so a bad file never stops an epoch.
    """

    def __init__(self, name: str, reason: str):
        super().__init__(f"sample '{name}': {reason}")
        self.name = name
        self.reason = reason


class DataSpecError(ValueError):
    """The dataset configuration itself is unusable (unknown format, missing root or list file, bad ratio)."""
