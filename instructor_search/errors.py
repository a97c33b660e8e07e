"""One exception tree for the whole package: catch :class:`InstructorSearchError` for all of them.

Every message says what happened and what to do about it.
"""

from __future__ import annotations


class InstructorSearchError(Exception):
    """Base class of every error raised by instructor-search."""


class ModelError(InstructorSearchError):
    """A model could not be found, downloaded or loaded."""


class ModelNotFoundError(ModelError):
    """The named model is neither a local folder, the bundled default, nor reachable on the hub."""


class InputError(InstructorSearchError, ValueError):
    """An argument or input value is malformed (wrong type, unknown option, bad shape)."""


class ReaderError(InstructorSearchError):
    """A corpus file or record could not be read; the message names the file (and line)."""


class IndexStoreError(InstructorSearchError):
    """Base class of errors about an index folder on disk."""


class IndexNotFoundError(IndexStoreError):
    """The folder is missing or holds no index."""


class IndexMismatchError(IndexStoreError):
    """The index was built with another model, dimension or instruction pair."""


class IndexCorruptError(IndexStoreError):
    """The index's SQLite file is unreadable or of an unknown schema."""


class FilterError(InstructorSearchError, ValueError):
    """A ``where`` filter names an unknown field, uses an unknown operator, or gives a value
    that cannot match its field's kind."""
