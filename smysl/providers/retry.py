"""The HTTP side of a provider: one JSON POST under a :class:`ProviderConfig`'s retry policy.

Timeouts, connection errors, malformed 2xx bodies and :data:`RETRYABLE_STATUS` are tried again
after an exponential backoff with jitter that waits at least as long as the server's
``Retry-After`` asks (up to ``max_retry_after``). A 413 raises :class:`PayloadTooLargeError` at
once, for the caller to split the batch; any other error status raises at once.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from smysl.providers.config import ProviderConfig
from smysl.providers.errors import (
    MalformedResponseError,
    PayloadTooLargeError,
    ProviderError,
    ProviderHTTPError,
    RetriesExhaustedError,
)
from smysl.providers.usage import Usage

log = logging.getLogger(__name__)

#: HTTP statuses worth another try: rate limits, timeouts, conflicts and server-side faults.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})

_T = TypeVar("_T")


class RetryingClient:
    """A pooled HTTP client for one provider endpoint that POSTs JSON with bounded retries.

    Thread-safe: the ``httpx.Client`` pools connections and ``usage`` is locked. ``name``,
    ``model`` and ``base_url`` only word the error messages.
    """

    def __init__(self, config: ProviderConfig, *, name: str, model: str, base_url: str,
                 api_key: str | None, usage: Usage, transport: Any = None,
                 seed: int | None = None) -> None:
        import httpx

        self.config = config
        self.name = name
        self.model = model
        self.base_url = base_url
        self.usage = usage
        self._rng = random.Random(seed)
        headers = {"User-Agent": "smysl", **dict(config.headers)}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            limits=httpx.Limits(max_connections=max(config.max_concurrency, 4) * 2,
                                max_keepalive_connections=max(config.max_concurrency, 4)),
            transport=transport,
            follow_redirects=True,
            verify=_ssl_context(),
        )

    def post(self, body: dict[str, Any], n: int, *, read: Callable[[Any, int], _T],
             sleep: Callable[[float], None]) -> _T:
        """POST ``body`` (``n`` inputs) and return ``read(decoded JSON, n)``, retrying what is
        worth retrying. ``read`` raises ``ValueError``/``KeyError``/``TypeError``/``IndexError``
        on a malformed body (retried) and anything else to stop at once."""
        import httpx

        cfg = self.config
        last: BaseException | None = None
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                self.usage.record_retry()
            retry_after: float | None = None
            try:
                resp = self._client.post(cfg.path, json=body)
            except httpx.TimeoutException as e:
                last = ProviderError(f"{self.name}: timed out ({type(e).__name__}) after "
                                     f"{cfg.timeout:g}s")
            except httpx.UnsupportedProtocol as e:  # a bad URL does not heal
                raise ProviderError(f"{self.name}: bad URL {self.base_url!r}: {e}") from e
            except httpx.RequestError as e:  # refused, reset, DNS, protocol, body decoding
                last = ProviderError(f"{self.name}: connection error: {e!r}")
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    try:
                        return read(resp.json(), n)
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        last = MalformedResponseError(
                            f"{self.name}: malformed response ({e}): {resp.text[:200]!r}")
                elif status == 413:
                    raise PayloadTooLargeError(
                        f"{self.name}: request too large (413) for {n} inputs: "
                        f"{_excerpt(resp)}", status, resp.text)
                elif status in RETRYABLE_STATUS:
                    retry_after = retry_after_seconds(resp.headers)
                    last = ProviderHTTPError(f"{self.name}: HTTP {status}: {_excerpt(resp)}",
                                             status, resp.text)
                else:
                    self.usage.record_failure()
                    raise ProviderHTTPError(self.explain(status, resp), status, resp.text)
            if attempt == cfg.max_retries:
                break
            delay = backoff_delay(cfg, attempt, self._rng, retry_after)
            log.debug("%s: retry %d in %.3fs after %s", self.name, attempt + 1, delay, last)
            sleep(delay)
        self.usage.record_failure()
        raise RetriesExhaustedError(
            f"{self.name}: gave up after {cfg.max_retries + 1} attempts: {last}") from last

    def explain(self, status: int, resp: Any) -> str:
        """The message for a status that is not retried, with a hint where one helps."""
        hint = ""
        if status in (401, 403):
            hint = (f" (check the API key: ${self.config.api_key_env})"
                    if self.config.api_key_env else " (the server wants an API key)")
        elif status == 404:
            hint = f" (unknown model {self.model!r} or wrong URL {self.base_url}{self.config.path})"
        return f"{self.name}: HTTP {status}{hint}: {_excerpt(resp)}"

    def close(self) -> None:
        self._client.close()


def backoff_delay(config: ProviderConfig, attempt: int, rng: random.Random,
                  retry_after: float | None = None) -> float:
    """Seconds to wait after failed try ``attempt`` (0-based): ``backoff_base`` doubled per try
    up to ``backoff_max``, times a 50-100% jitter, but at least ``retry_after`` (capped)."""
    backoff = min(config.backoff_max, config.backoff_base * 2.0 ** attempt)
    delay = backoff * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.max_retry_after))
    return delay


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI-style) or ``Retry-After`` (seconds or date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            v = float(ms) / 1000
            if math.isfinite(v) and v >= 0:
                return v
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        v = float(value)
        return v if math.isfinite(v) and v >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_rows(rows: Sequence[Sequence[float]], tokens: int | None, n: int, *,
               width: int | None, name: str) -> tuple[np.ndarray, int | None]:
    """``rows`` as a float32 array after checking the shape a parsed response must have.

    A wrong count, shape, non-finite value or token count raises ``ValueError`` (a malformed
    body, retried); rows of another ``width`` than expected raise :class:`ProviderError`.
    """
    if len(rows) != n:
        raise ValueError(f"{len(rows)} embeddings for {n} inputs")
    arr = np.asarray(rows, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"embeddings of shape {arr.shape}")
    if width is not None and arr.shape[1] != width:
        # Not transient: the model is not the width this object was built for.
        raise ProviderError(
            f"{name} returned {arr.shape[1]}-wide rows but {width} were expected; "
            f"pass dimensions={arr.shape[1]} if that is the model's width")
    if not np.isfinite(arr).all():
        raise ValueError("non-finite values in embeddings")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int)
                               or tokens < 0):
        raise ValueError(f"bad token count {tokens!r}")
    return arr, tokens


@functools.cache
def _ssl_context() -> Any:
    """One verified TLS context for every client: building one reads the CA bundle (~0.1 s)."""
    import httpx

    return httpx.create_ssl_context()


def _excerpt(resp: Any, limit: int = 300) -> str:
    text: str = resp.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
