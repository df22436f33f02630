"""Luodi's error types.

Every error a user can cause (a bad file, an unknown name, an invalid value) is a `LuodiError`
whose message says what was wrong, what is allowed, and what to do. The CLI prints it as one
line and exits non-zero; the server maps it to an OpenAI-style error body.
"""


class LuodiError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""

    exit_code = 2


class ModelNotFoundError(LuodiError):
    """A model name or path that names nothing Luodi can load."""


class ModelFormatError(LuodiError):
    """A model file that is truncated, corrupt, or of a kind Luodi does not support."""


class UnsupportedArchitectureError(LuodiError):
    """A model whose architecture has no Luodi implementation."""


class PullError(LuodiError):
    """Fetching a catalog model from its registry package failed."""


class InvalidParameterError(LuodiError):
    """A request or sampling parameter outside its allowed range."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PromptTooLongError(InvalidParameterError):
    """Prompt plus requested tokens do not fit in the model's context window."""


class DocumentError(LuodiError):
    """A document that cannot be read: unsupported type, corrupt file, no text found."""


class KnowledgeBaseError(LuodiError):
    """A knowledge base (or document in it) that cannot be created, opened or changed as asked."""


class KnowledgeBaseNotFoundError(KnowledgeBaseError):
    """No such knowledge base for this owner (another owner's looks exactly the same), or no
    such document in it."""


class KnowledgeBaseExistsError(KnowledgeBaseError):
    """A knowledge base of that name exists already."""
