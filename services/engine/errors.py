"""Exception types the engine raises for bad input.

Each one subclasses ``ValueError`` (or ``FileNotFoundError``) so callers that
only know the builtin types still catch them, while the gateway and gRPC layers
can map each type to its own status code.
"""


class TandemError(Exception):
    """Base class of every error tandem raises on purpose."""


class InvalidRequestError(TandemError, ValueError):
    """The request cannot be served as given (maps to HTTP 400 / INVALID_ARGUMENT)."""


class EmptyPromptError(InvalidRequestError):
    """The prompt has no tokens."""


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus the tokens it asks for) does not fit the model's context."""


class InvalidSamplingParamsError(InvalidRequestError):
    """A sampling parameter is out of its allowed range."""


class ModelLoadError(TandemError):
    """The model cannot be loaded."""


class UnsupportedArchitectureError(ModelLoadError, ValueError):
    """The checkpoint's architecture is not one tandem implements."""


class ModelFilesMissingError(ModelLoadError, FileNotFoundError):
    """A file the checkpoint needs (config, weights, tokenizer) is absent."""
