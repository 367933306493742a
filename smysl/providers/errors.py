"""What a provider raises: one :class:`ProviderError` tree, from one failed request up to an
``embed`` call that could not embed every input."""

from __future__ import annotations


class ProviderError(RuntimeError):
    """A provider request failed."""


class ProviderHTTPError(ProviderError):
    """The provider answered with an error status."""

    def __init__(self, message: str, status: int, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class PayloadTooLargeError(ProviderHTTPError):
    """413: the request was too big; it is split and sent again."""


class MalformedResponseError(ProviderError):
    """A 2xx response whose body does not have the documented shape."""


class RetriesExhaustedError(ProviderError):
    """A request kept failing with retryable errors until the retry budget ran out."""


class IncompleteEmbeddingError(ProviderError):
    """Some inputs could not be embedded; nothing is returned rather than a partial result.

    ``failed`` lists their positions in the input (sorted), ``cause`` is the first error.
    """

    def __init__(self, message: str, failed: list[int], total: int,
                 cause: BaseException | None) -> None:
        super().__init__(message)
        self.failed = failed
        self.total = total
        self.cause = cause


class RejectedInputError(IncompleteEmbeddingError, ValueError):
    """The provider rejected the inputs themselves (400/422: empty, too long, malformed).

    A ``ValueError`` like the engine's input errors, so callers that isolate bad inputs (the
    server's batcher, the CLI) treat it the same way.
    """
