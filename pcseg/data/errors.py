"""Specific exceptions for bad dataset files.

Every error names the offending file and says what is wrong with it, e.g.
``ScanFormatError: sequences/04/velodyne/000123.bin: 1000003 bytes is not a multiple of 16``.
They all derive from :class:`DatasetFileError` (itself a ``ValueError``) so a data-loading
policy can catch one type.
"""

from __future__ import annotations

from pathlib import Path


class DatasetFileError(ValueError):
    """A dataset file is missing, unreadable or malformed. ``path`` is the file.

    ``kind`` is a short machine-readable name of the problem (``unreadable``, ``corrupt``,
    ``empty``, ``non_finite``, ``count_mismatch``, ``unknown_ids``, ``missing``, ...), so
    :mod:`pcseg.data.validation` can group problems without parsing messages.
    """

    kind = "invalid"

    def __init__(self, path: str | Path, problem: str, kind: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.kind = kind or type(self).kind
        super().__init__(f"{self.path}: {problem}")


class ScanFormatError(DatasetFileError):
    """A point-cloud file cannot be read as a scan (size, format, empty, non-finite)."""


class LabelFormatError(DatasetFileError):
    """A .label file is malformed, has unknown raw ids, or does not match its scan."""


class LabelConfigError(DatasetFileError):
    """The label definition yaml is inconsistent or incomplete."""
