"""Errors with a human message. The CLI and the UI print ``str(err)`` and keep going."""


class VisualSearchError(Exception):
    """Base class: the message is meant for a person, not a traceback reader."""


class ImageError(VisualSearchError):
    """A photo could not be read, is corrupt, or is too large."""


class ModelUnavailableError(VisualSearchError):
    """Model weights cannot be loaded (no network, bad path, unknown name)."""


class UnsupportedQueryError(VisualSearchError):
    """The query cannot be answered by this model (e.g. text search on an image-only model)."""


class StoreUnavailableError(VisualSearchError):
    """The vector store cannot be reached or opened."""


class ModelMismatchError(VisualSearchError):
    """The index was built with another model; mixing embeddings would give garbage."""


class CatalogError(VisualSearchError):
    """The catalog file as a whole cannot be used (missing columns, unreadable file)."""


class InvalidQueryError(VisualSearchError, ValueError):
    """A search option is out of range (NaN price, top_k 0, threshold 5, ...).

    Raised by SearchFilters and the engine's query-option check, the one place that validates;
    the CLI, the API and the UI all show ``str(err)``, one line, as it is.
    """
