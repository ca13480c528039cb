"""The errors a user can fix from the message alone; the commands print them as one line and exit 2."""

from __future__ import annotations


class DataValidationError(ValueError):
    """Bad input data. The message is one line naming the file, the column and an example row."""


class ConfigError(ValueError):
    """A configuration that cannot work (e.g. a label window that leaks into the test period)."""


class ArtifactError(ValueError):
    """A model file that cannot be used: unreadable, tampered with, or of an unknown format version."""


class MonitorError(ValueError):
    """An input monitoring cannot use: a model without a reference, an unusable labels file."""
