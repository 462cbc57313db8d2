"""Errors raised by the data layer.

Every error is a :class:`DatasetError`, itself a ``ValueError``, so callers can catch one type;
the subclasses also derive from the builtin that fits (``FileNotFoundError``, ``KeyError``).
"""


class DatasetError(ValueError):
    """A dataset could not be found, read or trusted (bad keys, shapes or values)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The source names no dataset that exists here (the message lists what does)."""


class DatasetKeyError(DatasetError, KeyError):
    """A required field is missing from the source."""

    def __str__(self):  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""
