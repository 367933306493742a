"""What a provider raises: one :class:`ProviderError` tree, from one failed request up to an
``embed`` call that could not embed every input."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from smysl.base import UpstreamError


class ProviderError(UpstreamError):
    """A provider request failed."""


class ProviderHTTPError(ProviderError):
    """The provider answered with an error status; ``body`` is its answer, with this client's
    key, credential headers and URL password as ``***`` (upstreams echo request headers).
    ``retry_after``: the seconds it asked to wait (``Retry-After``; a 429's rate-limit reset:
    ``retry.retry_after_seconds``)."""

    def __init__(self, message: str, status: int, body: str = "", *,
                 retry_after: float | None = None) -> None:
        words = " ".join(body.split())  # one line
        if words in ("", "{}", "null"):
            reason = f"HTTP {status}"
        else:
            reason = f"HTTP {status}: {words[:300]}" + ("…" if len(words) > 300 else "")
        super().__init__(message, status_to_answer=status if status in (429, 503) else 502,
                         retry_after=retry_after, reason=reason)
        self.status = status
        self.body = body


class PayloadTooLargeError(ProviderHTTPError):
    """413: the request was too big; it is split and sent again."""


class InputRefusedError(ProviderHTTPError):
    """One input, sent in a request of its own, was refused (400/422, or 413: too large for
    the server): ``position`` is its place in the texts of the ``embed`` call."""

    def __init__(self, message: str, status: int, body: str, position: int) -> None:
        super().__init__(message, status, body)
        self.position = position


class MalformedResponseError(ProviderError):
    """A 2xx response whose body does not have the documented shape."""

    reason = "an answer not of the documented shape"


class InvalidRowError(MalformedResponseError, ValueError):
    """A 2xx response with a row that is no embedding: zero, non-finite, non-numeric, of the
    wrong width, or with a norm that float32 cannot hold. Retried like any malformed body; the
    message names the provider, the row and the input."""


class BilledAnswerError(ValueError):
    """A 2xx answer whose rows cannot be read, though it was billed: ``tokens`` is the count
    it reported (None: none), recorded before it is refused (and the request retried)."""

    def __init__(self, message: str, tokens: object = None) -> None:
        super().__init__(message)
        self.tokens = tokens


class RetriesExhaustedError(ProviderError):
    """A request kept failing with retryable errors until the retry budget ran out."""


class ProviderTimeoutError(ProviderError, TimeoutError):
    """A wall-clock limit ran out (see :class:`RequestTimeoutError`, :class:`JobTimeoutError`)."""

    status_to_answer = 504


class RequestTimeoutError(ProviderTimeoutError):
    """One HTTP request got no complete answer within ``timeout`` seconds (retried)."""

    reason = "no complete answer within the time limit of a request"


class JobTimeoutError(ProviderTimeoutError):
    """One ``embed`` call ran past ``job_timeout`` seconds, across all its requests and retries.
    Rows finished before it are kept (see :class:`PartialEmbeddingError`)."""

    reason = "the call ran past its time limit"


class IncompleteEmbeddingError(ProviderError):
    """Some inputs could not be embedded.

    ``failed``: their positions in the input (sorted); ``done``: the positions that were
    embedded, with their raw rows in ``rows`` (float32 ``[len(done), width]``, the provider's
    full width, not yet cut or normalised; :func:`smysl.pooling.finish` makes them what
    ``embed`` returns). ``total`` is the input count and ``cause`` the first error. The same
    provider object keeps those rows: calling ``embed`` again with the same texts sends only
    the failed ones (see ``docs/providers.md``, "Partial failures").
    """

    #: Where the error that stopped it says nothing of its own for a server's clients.
    reason = "its answers did not embed every input"

    def __init__(self, message: str, failed: list[int], total: int,
                 cause: BaseException | None, *, done: list[int] | None = None,
                 rows: np.ndarray | None = None, resume: str = "") -> None:
        super().__init__(message + resume)
        #: The message without ``resume``, the advice that holds for the same provider object
        #: only (a command's process ends with the error: it keeps nothing).
        self.summary = message
        self.failed = failed
        self.total = total
        self.cause = cause
        self.done: list[int] = done or []
        self.rows: np.ndarray = rows if rows is not None else np.zeros((0, 0), np.float32)
        answered_as(self, cause)  # what stopped it says what a server answers


def answered_as(error: UpstreamError, last: BaseException | None) -> UpstreamError:
    """``error``, raised because of ``last``, with the answer a server gives for it: a retry
    budget spent on 429s is still a rate limit (429 and its ``Retry-After``); a job timeout
    (504) also, and otherwise stays a timeout; any other error answers as ``last``."""
    if isinstance(last, UpstreamError) and (
            not isinstance(error, ProviderTimeoutError) or last.status_to_answer == 429):
        error.status_to_answer, error.retry_after = last.status_to_answer, last.retry_after
        if last.reason is not None:  # else error's own (its class's, or its message)
            error.reason = last.reason
    return error


class PartialEmbeddingError(IncompleteEmbeddingError):
    """Some inputs were embedded (and paid for) before a request failed for good: ``done`` and
    ``rows`` hold them, ``failed`` the rest. ``embed`` again with the same texts resumes."""


class RejectedInputError(IncompleteEmbeddingError, ValueError):
    """The provider rejected the inputs themselves (400/422: empty, too long, malformed; or 413
    for one input sent alone: too large for the server, e.g. TEI without truncation).

    A ``ValueError`` like the engine's input errors, so callers that isolate bad inputs (the
    server's batcher, the CLI) treat it the same way. Rows embedded before it are kept too.
    """

    @property
    def refused(self) -> int | None:
        """The place of the input found refused on its own (``failed`` also holds the inputs
        not sent after it); None when the refusal was not traced to one input."""
        return self.cause.position if isinstance(self.cause, InputRefusedError) else None

    @property
    def named(self) -> int | None:
        """The input a message names: :attr:`refused`, else the first that failed."""
        if self.refused is not None:
            return self.refused
        return self.failed[0] if self.failed else None

    def placed(self, places: Sequence[int], total: int) -> RejectedInputError:
        """This error of a call on some of ``total`` texts (a Ray actor's part of them) as one
        of the call on all: its input ``i`` is input ``places[i]`` there."""
        cause = self.cause
        contiguous = all(b == a + 1 for a, b in itertools.pairwise(places))
        where = (f" (places counted from input #{places[0]} of {total})" if contiguous else
                 f" (places counted among {len(places)} of {total} inputs)")
        if isinstance(cause, InputRefusedError):
            cause = InputRefusedError(str(cause) + where, cause.status, cause.body,
                                      places[cause.position])
        return RejectedInputError(self.summary + where, [places[i] for i in self.failed],
                                  total, cause, done=[places[i] for i in self.done],
                                  rows=self.rows)
