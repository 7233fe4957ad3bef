"""One hierarchy for the errors a user can act on.

Everything raised for a user's mistake (a bad config value, an unreadable file, a checkpoint that
does not fit, an input of the wrong size, a run that diverged) derives from :class:`LightsegError`.
The command line catches this hierarchy only: any other exception is a bug and keeps its traceback.

The subclasses also derive from the builtin a caller would expect (``ValueError``,
``FileNotFoundError``, ``KeyError``, ``RuntimeError``, ``OSError``) so that ``except ValueError`` code written
against earlier versions keeps working.
"""

from __future__ import annotations


class LightsegError(Exception):
    """Base of every error a user can act on; the message says what is wrong and where."""


class ConfigError(LightsegError, ValueError):
    """A recipe, command-line option or field value that cannot be used (names the field)."""


class DataError(LightsegError, ValueError):
    """Bad input data: names the file (or folder) and what is wrong with it."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The dataset root (or one of its required folders) does not exist; names the expected layout."""


class SplitNotFoundError(DatasetNotFoundError):
    """A split the dataset does not have; names the splits it has."""


class CheckpointError(LightsegError, ValueError):
    """A checkpoint or weights file that cannot be read or does not fit the model."""


class ForeignCheckpointError(CheckpointError):
    """A readable checkpoint in a layout other than lightseg's own: it does not name its model, so it
    loads only into a model built by name (``create_model(name, weights=path)``)."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """A weights file or URL that cannot be found or fetched; names it and the offline alternative."""


class UnknownModelError(LightsegError, KeyError):
    """A model name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownDatasetError(ConfigError, KeyError):
    """A dataset name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownOptionError(ConfigError, TypeError):
    """A model or head option that does not exist (``model.kwargs``); lists the valid ones."""


class InputError(LightsegError, ValueError):
    """An input to inference (image, video, size, exported file) that cannot be used."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input file (image, video, exported model) that does not exist; names the path."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """A recipe file that does not exist; names the path."""


class OutOfMemoryError(LightsegError, RuntimeError):
    """The device ran out of memory; says which settings lower the need and what was saved."""


class StorageError(LightsegError, OSError):
    """A file lightseg writes cannot be written (a full, read-only or vanished disk): names the path,
    the cause and what to do; no partial file is left behind."""


class DivergenceError(LightsegError, RuntimeError):
    """Training produced non-finite values; names the last finite checkpoint."""


class RequestError(InputError):
    """A request the segmentation server refuses (empty, too large, not an image, corrupt, bad
    option): ``status`` is the HTTP status (4xx) and ``code`` a stable machine-readable name."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
