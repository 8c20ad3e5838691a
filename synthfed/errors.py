"""The project's own errors, and what each means for a user at the command line.

The CLI's error boundary (``synthfed.cli``) prints one line for any of these
(naming the file, row, client or option) and exits with ``exit_code``: 2 for
a usage error (a bad option value or combination, as Unix tools do), 1 for
bad data, a damaged or locked file, or a runtime failure. The core raises
them and never prints."""

from __future__ import annotations


class SynthfedError(Exception):
    """Base of every error the CLI reports as one line (exit 1: data or runtime)."""

    exit_code = 1


class UsageError(SynthfedError, ValueError):
    """A bad option value or combination (exit 2)."""

    exit_code = 2


class InputError(SynthfedError, ValueError):
    """Bad input data or files: a label out of range, a damaged image, a mismatched dataset (exit 1)."""


class IntegrityError(SynthfedError):
    """A file differs from the checksum recorded when it was written (exit 1)."""


class RunLocked(SynthfedError):
    """Another process owns this run or output directory (exit 1)."""


class DataNote(UserWarning):
    """Something the core changed in the user's input and the user should know
    (images resized, colour modes converted). The core never prints: it emits
    ``warnings.warn(text, DataNote)`` and the CLI prints each as one "note:" line."""
