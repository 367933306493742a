"""The HTTP side of a provider: JSON requests under a :class:`ProviderConfig`'s retry policy,
wall-clock deadlines, and the upstream's health.

Timeouts, connection errors and :data:`RETRYABLE_STATUS` are tried again after an exponential
backoff with jitter that waits at least as long as the server's
``Retry-After`` asks, or for a 429 without one its spent limit's ``x-ratelimit-reset-*`` (up to
``max_retry_after``). A 2xx answer of JSON that cannot be used is tried again
:data:`MALFORMED_TRIES` - 1 times at most: the provider billed it, and an answer malformed once is
mostly malformed again (a body that is no JSON, a proxy's page, is retried as a 5xx is). A 413
raises :class:`PayloadTooLargeError` at once, for the caller to split the batch; any other error
status raises at once.

Deadlines are wall time, not per read (issue 11 item 7): each HTTP request runs on a helper
thread and the caller stops waiting ``timeout`` seconds after sending, however slowly the body
drips in; a :class:`Deadline` (``job_timeout``) bounds a whole ``embed`` call, its backoffs
included.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from smysl.providers.config import ProviderConfig
from smysl.providers.errors import (
    JobTimeoutError,
    MalformedResponseError,
    PayloadTooLargeError,
    ProviderError,
    ProviderHTTPError,
    RequestTimeoutError,
    RetriesExhaustedError,
    answered_as,
)
from smysl.providers.usage import Usage
from smysl.shown import header_secrets, redacted, shown_url, url_secrets

log = logging.getLogger(__name__)

#: HTTP statuses worth another try: rate limits, timeouts, conflicts and server-side faults.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: Attempts in a row without any HTTP answer (timeouts, refused or reset connections) after
#: which the upstream counts as down (:attr:`RetryingClient.healthy` is False).
UNHEALTHY_AFTER = 2
#: Seconds before the first probe of an upstream that is down; doubled per failed probe up to
#: :data:`PROBE_MAX`.
PROBE_INTERVAL = 5.0
PROBE_MAX = 60.0
#: Attempts answered 2xx with JSON that could not be used after which a request gives up,
#: whatever ``max_retries`` allows: each was billed, and a gateway that caps results or names
#: a field its own way answers every repeat the same (a review saw 7 billed tries of one).
MALFORMED_TRIES = 2

_T = TypeVar("_T")


@dataclass
class Deadline:
    """The wall-clock limit of one ``embed`` call (``job_timeout``; None: no limit)."""

    seconds: float | None
    name: str
    start: float = field(default_factory=time.monotonic)
    #: The call it limits, and what its error says is kept (a rerank call keeps nothing).
    call: ClassVar[str] = "embed"
    kept: ClassVar[str] = "rows finished so far are kept, so calling embed again resumes. "

    def remaining(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - (time.monotonic() - self.start)

    def check(self) -> None:
        if self.remaining() <= 0:
            raise self.error()

    def error(self, why: str | None = None) -> JobTimeoutError:
        """The error of a call past its limit (``why``: what ends it before the limit)."""
        what = (f"{why}; job_timeout={self.seconds:g}s" if why
                else f"the {self.call} call ran past job_timeout={self.seconds:g}s")
        return JobTimeoutError(
            f"{self.name}: {what} (the wall-clock limit of one call, all its requests, retries "
            f"and waits included); {self.kept + 'Pass' if self.kept else 'pass'} "
            "job_timeout=SECONDS to change it (None: no limit)")


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer, read within its deadline."""

    status: int
    headers: Any  # httpx.Headers: case-insensitive
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _WallTimeout(Exception):
    """Raised inside the helper thread when the request's wall time is up."""


class RetryingClient:
    """A pooled HTTP client for one provider endpoint with bounded retries and deadlines.

    Thread-safe: the ``httpx.Client`` pools connections; ``usage`` and the health state are
    locked. ``name``, ``model`` and ``base_url`` only word the error messages.
    """

    def __init__(self, config: ProviderConfig, *, name: str, model: str, base_url: str,
                 api_key: str | None, usage: Usage, transport: Any = None,
                 seed: int | None = None, probe: Callable[[], object] | None = None) -> None:
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
        #: What an upstream's error body must not carry into a message (one that echoes the
        #: request's headers): the key, the headers' values, the URL's password.
        self._secrets = [api_key or "", *header_secrets(config.headers), *url_secrets(base_url)]
        pool = max(config.max_concurrency, 4) * 2
        # a query (Azure's ?api-version=) goes with every request to a path under the base
        # URL: in httpx's base_url it stood before the path (/v1?api-version=1/embeddings),
        # and as the client's params it replaced an absolute URL's own query
        parts = urllib.parse.urlsplit(base_url)
        self._query = parts.query
        self._client = httpx.Client(
            base_url=urllib.parse.urlunsplit(parts._replace(query="", fragment="")),
            headers=headers,
            timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
            # Every connection may stay open: httpcore closes "surplus" idle connections by
            # counting all of them, and one just handed to another thread still looks idle, so a
            # smaller keep-alive limit closed connections under requests the server had already
            # answered and billed (sent again after "Bad file descriptor"), and made a new
            # connection (a TLS handshake) for most requests from a few threads.
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            transport=transport,
            follow_redirects=True,  # within the upstream only: _stay_with_upstream
            event_hooks={"response": [self._stay_with_upstream]},
            verify=_ssl_context(),
        )
        #: A small real request (one short text) sent to see whether a down upstream is back.
        self.probe = probe
        self._health_lock = threading.Lock()
        self._silent = 0  # attempts in a row without an HTTP answer
        self._answered = False  # any HTTP answer yet, from this upstream
        host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
        #: Nothing listens on a port of this machine that refused twice before any answer
        #: (``refused_means_down``: Ollama not started): no use waiting out max_retries (25 s).
        self._local = host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")
        self._probing = False
        self._next_probe = 0.0
        self._probe_wait = PROBE_INTERVAL
        self._closed = False

    def _stay_with_upstream(self, response: Any) -> None:
        """Let httpx follow a redirect only within the upstream's origin (or from http to
        https on its host): a 307/308 sends the POST body, the caller's texts, on to wherever
        it points, and httpx drops only the key on the way."""
        if not response.has_redirect_location:
            return
        here = response.request.url
        there = here.join(response.headers["location"])
        same = (there.scheme, there.port) == (here.scheme, here.port)
        upgraded = (here.scheme, there.scheme) == ("http", "https") and here.port is None
        if there.host == here.host and (same or (upgraded and there.port is None)):
            return
        raise ProviderError(
            f"{self.name}: {shown_url(str(here))} redirects to {shown_url(str(there))}, "
            "another address; the texts are not sent on there: give that address as the base "
            "URL if it is the right one", reason="it redirects to another address")

    # ---------------------------------------------------------------- health
    @property
    def healthy(self) -> bool:
        """False once :data:`UNHEALTHY_AFTER` attempts in a row got no HTTP answer at all
        (timed out, refused, reset); True again after any answer, error statuses included
        (the upstream is up; errors are per request). Cheap and non-blocking: while down,
        :attr:`probe` runs on a background thread, first after :data:`PROBE_INTERVAL`
        seconds, then less and less often, so health comes back without traffic too."""
        with self._health_lock:
            if self._silent < UNHEALTHY_AFTER:
                return True
            now = time.monotonic()
            if self.probe is not None and not self._probing and now >= self._next_probe:
                self._probing = True
                self._next_probe = now + self._probe_wait
                self._probe_wait = min(2 * self._probe_wait, PROBE_MAX)
                threading.Thread(target=self._run_probe, daemon=True,
                                 name=f"smysl-probe-{self.config.name}").start()
            return False

    def _heard(self, answered: bool) -> None:
        with self._health_lock:
            if answered:
                self._silent, self._probe_wait = 0, PROBE_INTERVAL
                self._answered = True
            else:
                if self._silent + 1 == UNHEALTHY_AFTER:  # just went down: first probe later
                    self._next_probe = time.monotonic() + PROBE_INTERVAL
                self._silent += 1

    def _run_probe(self) -> None:
        assert self.probe is not None
        try:
            self.probe()  # its answer, if any, marks the upstream up (``_heard``)
        except Exception as e:
            log.debug("%s: health probe failed: %r", self.name, e)
        finally:
            with self._health_lock:
                self._probing = False

    # ---------------------------------------------------------------- requests
    def post(self, body: dict[str, Any], n: int, *, read: Callable[[Any, int], _T],
             sleep: Callable[[float], None], deadline: Deadline | None = None,
             path: str | None = None, headers: dict[str, str] | None = None) -> _T:
        """POST ``body`` (``n`` inputs) to ``path`` (default: the config's) and return
        ``read(decoded JSON, n)``, retrying what is worth retrying within ``deadline``.
        ``read`` raises ``ValueError``/``KeyError``/``TypeError``/``IndexError`` on a malformed
        body (retried) and anything else to stop at once."""
        return self.request("POST", path if path is not None else self.config.path, body,
                            n, read=read, sleep=sleep, deadline=deadline, headers=headers)

    def request(self, method: str, url: str, body: dict[str, Any] | None, n: int, *,
                read: Callable[[Any, int], _T], sleep: Callable[[float], None],
                deadline: Deadline | None = None, headers: dict[str, str] | None = None) -> _T:
        """One request (``url`` relative to the base URL, or absolute) under the retry policy;
        see :meth:`post`."""
        cfg = self.config
        last: BaseException | None = None
        malformed = 0  # 2xx answers whose bodies could not be used
        for attempt in range(cfg.max_retries + 1):
            if self._closed:  # not a connection error to retry (httpx's RuntimeError was)
                raise ProviderError(f"{self.name}: the provider is closed (close() was "
                                    f"called); load it again to use it")
            if attempt:
                self.usage.record_retry()
            budget = cfg.timeout
            if deadline is not None:
                deadline.check()
                budget = min(budget, deadline.remaining())
            retry_after: float | None = None
            try:
                resp = self._attempt(method, url, body, headers or {}, budget)
            except _WallTimeout:
                self._heard(False)
                if budget < cfg.timeout and deadline is not None:  # cut short by the job's
                    self.usage.record_failure()
                    raise answered_as(deadline.error(), last) from None
                last = RequestTimeoutError(
                    f"{self.name}: no complete answer within timeout={cfg.timeout:g}s (the "
                    "wall-clock limit of one HTTP request, body included; pass "
                    "timeout=SECONDS to change it)")
            except ProviderError:
                raise
            except Exception as e:  # refused, reset, DNS, protocol, body decoding
                self._heard(False)
                # an exception's words may quote a header (httpx's "Illegal header value")
                hint = f"; {cfg.unreachable_hint}" if cfg.unreachable_hint else ""
                last = ProviderError(f"{self.name}: connection error: {self.shown(repr(e))}"
                                     f"{hint}",
                                     reason=f"could not reach it ({type(e).__name__})")
                if (cfg.refused_means_down and self._local and not self._answered
                        and _refused(e) and UNHEALTHY_AFTER <= attempt + 1 <= cfg.max_retries):
                    self.usage.record_failure()
                    raise answered_as(RetriesExhaustedError(
                        f"{self.name}: nothing listens at {shown_url(self.base_url)}: refused "
                        f"{attempt + 1} times, not tried again (is its server started?): "
                        f"{last}"), last) from e
            else:
                self._heard(True)
                status = resp.status
                if 200 <= status < 300:
                    try:
                        decoded = resp.json()
                    except ValueError as e:  # not JSON: a proxy's page, not an answer billed
                        last = self._malformed(resp, e)
                    else:
                        try:
                            return read(decoded, n)
                        except MalformedResponseError as e:  # says what is wrong, and where
                            last = e
                        except (ValueError, KeyError, TypeError, IndexError) as e:
                            last = self._malformed(resp, e)
                        except ProviderError:
                            self.usage.record_failure()
                            raise
                        malformed += 1
                        if malformed == MALFORMED_TRIES and attempt < cfg.max_retries:
                            self.usage.record_failure()
                            raise answered_as(RetriesExhaustedError(
                                f"{self.name}: gave up after {attempt + 1} attempts, "
                                f"{malformed} answered with JSON that could not be used (not "
                                f"tried again: each answer is billed): {last}"), last) from last
                elif status == 413:
                    raise PayloadTooLargeError(
                        f"{self.name}: request too large (413) for {n} inputs: "
                        f"{self.excerpt(resp)}", status, self.shown(resp.text))
                elif status in RETRYABLE_STATUS:
                    retry_after = retry_after_seconds(resp.headers, status)
                    last = ProviderHTTPError(f"{self.name}: HTTP {status}: {self.excerpt(resp)}",
                                             status, self.shown(resp.text),
                                             retry_after=retry_after)
                else:
                    self.usage.record_failure()
                    raise ProviderHTTPError(self.explain(status, resp), status,
                                            self.shown(resp.text))
            if attempt == cfg.max_retries:
                break
            delay = backoff_delay(cfg, attempt, self._rng, retry_after)
            if deadline is not None and delay >= deadline.remaining():
                self.usage.record_failure()
                # the wait it would take, not the time spent, runs past the limit: say so
                raise answered_as(deadline.error(f"the next try would wait {delay:.3g}s, past "
                                                 f"it, after {last}"), last) from last
            log.debug("%s: retry %d in %.3fs after %s", self.name, attempt + 1, delay, last)
            sleep(delay)
        self.usage.record_failure()
        raise answered_as(RetriesExhaustedError(
            f"{self.name}: gave up after {cfg.max_retries + 1} attempts: {last}"), last) from last

    def _malformed(self, resp: Answer, e: Exception) -> MalformedResponseError:
        # secrets out first, then cut (a key cut in two was no key to hide)
        return MalformedResponseError(f"{self.name}: malformed response ({self.shown(str(e))}): "
                                      f"{self.excerpt(resp, 200)!r}")

    def _attempt(self, method: str, url: str, body: dict[str, Any] | None,
                 headers: dict[str, str], budget: float) -> Answer:
        if budget <= 0:
            raise _WallTimeout
        return self._fetch(method, url, body, headers, budget)

    def _fetch(self, method: str, url: str, body: dict[str, Any] | None,
               headers: dict[str, str], budget: float) -> Answer:
        """The whole answer within ``budget`` seconds of wall time, or :class:`_WallTimeout`.

        httpx's timeouts are per read, so a body dripping a byte a second never times out
        (issue 11 item 7). The request runs on a daemon thread that checks the time between
        chunks; the caller waits for it at most ``budget`` seconds and then leaves it (it
        closes its connection at its next chunk or read timeout).
        """
        import httpx

        end = time.monotonic() + budget
        stop = threading.Event()
        box: dict[str, Any] = {}
        finished = threading.Event()
        timeout = httpx.Timeout(budget, connect=min(self.config.connect_timeout, budget))

        def run() -> None:
            try:
                with self._client.stream(method, url, json=body, headers=headers,
                                         params=None if "://" in url else self._query or None,
                                         timeout=timeout) as resp:
                    chunks = []
                    for chunk in resp.iter_bytes():
                        if stop.is_set() or time.monotonic() > end:
                            raise _WallTimeout
                        chunks.append(chunk)
                    box["answer"] = Answer(resp.status_code, resp.headers, b"".join(chunks))
            except httpx.ConnectTimeout as e:  # a connection error, reported as such
                box["error"] = e
            except httpx.TimeoutException:
                box["error"] = _WallTimeout()
            except BaseException as e:
                box["error"] = e
            finally:
                finished.set()

        threading.Thread(target=run, daemon=True, name=f"smysl-http-{self.config.name}").start()
        if not finished.wait(budget):
            stop.set()
            raise _WallTimeout
        if "error" in box:
            error: BaseException = box["error"]
            if isinstance(error, httpx.UnsupportedProtocol):  # a bad URL does not heal
                raise ProviderError(f"{self.name}: bad URL {shown_url(self.base_url)!r}: "
                                    f"{self.shown(str(error))}", reason="its URL is not usable")
            if isinstance(error, httpx.LocalProtocolError):  # a request we cannot send
                raise ProviderError(f"{self.name}: the request could not be sent "
                                    f"({self.shown(str(error))}); check the headers given",
                                    reason="the request could not be sent")
            raise error
        answer: Answer = box["answer"]
        return answer

    def fire(self, method: str, url: str, budget: float) -> None:
        """One best-effort request whose answer does not matter (cancelling a prediction)."""
        try:
            self._fetch(method, url, None, {}, budget)
        except Exception as e:
            log.debug("%s: %s %s failed: %r", self.name, method, url, e)

    def explain(self, status: int, resp: Answer) -> str:
        """The message for a status that is not retried, with a hint where one helps."""
        hint = ""
        if status in (401, 403):
            hint = (f" (check the API key: {self.config.key_names})"  # it read "$A,B"
                    if self.config.key_variables else " (the server wants an API key)")
        elif status == 404:
            hint = (f" (unknown model {self.model!r} or wrong URL "
                    f"{shown_url(self.base_url.partition('?')[0] + self.config.path)})")
        return f"{self.name}: HTTP {status}{hint}: {self.excerpt(resp)}"

    def shown(self, text: str) -> str:
        """``text`` (an upstream's words) without this client's secrets."""
        return redacted(text, self._secrets)

    def excerpt(self, resp: Answer, limit: int = 300) -> str:
        """The start of an upstream's answer, on one line, without this client's secrets."""
        text = self.shown(resp.text.strip().replace("\n", " "))
        return text[:limit] + ("…" if len(text) > limit else "")

    def close(self) -> None:
        self._closed = True
        self._client.close()


def _refused(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a refused TCP connection."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain may loop back on itself
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def backoff_delay(config: ProviderConfig, attempt: int, rng: random.Random,
                  retry_after: float | None = None) -> float:
    """Seconds to wait after failed try ``attempt`` (0-based): ``backoff_base`` doubled per try
    up to ``backoff_max``, times a 50-100% jitter, but at least ``retry_after`` (capped)."""
    backoff = min(config.backoff_max, config.backoff_base * 2.0 ** attempt)
    delay = backoff * rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, config.max_retry_after))
    return delay


def retry_after_seconds(headers: Any, status: int | None = None) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI-style) or ``Retry-After`` (seconds or date),
    else, for a 429, from the rate-limit headers (:func:`ratelimit_reset_seconds`: OpenAI sends
    them with every answer, a 503 included, where no limit is the cause)."""
    told = _retry_after(headers)
    if told is None and status == 429:
        return ratelimit_reset_seconds(headers)
    return told


#: The ``x-ratelimit-*`` limits (suffixes) whose reset a 429 without ``Retry-After`` waits for.
RATELIMITS = ("requests", "tokens")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def ratelimit_reset_seconds(headers: Any) -> float | None:
    """Seconds until a 429's spent limit resets, from ``x-ratelimit-reset-requests`` /
    ``-tokens`` (OpenAI, Groq and others: durations such as ``1s``, ``6m0s``, ``250ms``) or
    ``x-ratelimit-reset`` (seconds, or a Unix time). Where ``x-ratelimit-remaining-*`` says
    which limits are spent, the latest of their resets (None where it says none is); without
    it, the soonest reset (the backoff goes on growing after it). A 429 with only these
    headers was retried on the backoff alone: too soon, each try spent."""
    remaining = {n: headers.get(f"x-ratelimit-remaining-{n}") for n in RATELIMITS}
    spent = [n for n, v in remaining.items() if v is not None and v.strip() == "0"]
    if not spent and any(v is not None for v in remaining.values()):
        return None  # no limit of these spent: the 429 is another's, the backoff's to wait
    shared = _reset_value(headers.get("x-ratelimit-reset"))  # a limit without its own
    resets: list[float] = []
    for n in spent or RATELIMITS:
        own = _reset_value(headers.get(f"x-ratelimit-reset-{n}"))
        if own is not None:
            resets.append(own)
        elif shared is not None:
            resets.append(shared)
    if not resets:
        return None
    return max(resets) if spent else min(resets)


def _reset_value(value: str | None) -> float | None:
    """Seconds from a reset header's value: a duration (``1m30s``), or a number of seconds, or
    a Unix time in seconds (from 1e9: 2001 on) or in milliseconds (from 1e12)."""
    if value is None:
        return None
    value = value.strip()
    if _DURATION.fullmatch(value):
        return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    try:
        v = float(value)
    except ValueError:
        return None
    if not math.isfinite(v) or v < 0:
        return None
    if v >= 1e12:
        v /= 1000
    return max(0.0, v - time.time()) if v >= 1e9 else v


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After``, where given and valid."""
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


@functools.cache
def _ssl_context() -> Any:
    """One verified TLS context for every client: building one reads the CA bundle (~0.1 s)."""
    import httpx

    return httpx.create_ssl_context()
