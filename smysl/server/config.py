"""Server settings: one frozen value built at the edge (CLI or caller) and passed everywhere."""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from smysl.base import BaseEmbedder
    from smysl.rerank import BaseReranker

#: Environment variable read for the API key when ``--api-key`` is not given.
API_KEY_ENV = "SMYSL_API_KEY"
#: Environment variables read for the interface and port when no flag or value gives them
#: (like TEI's ``HOSTNAME``/``PORT`` and Ollama's ``OLLAMA_HOST``).
HOST_ENV, PORT_ENV = "SMYSL_HOST", "SMYSL_PORT"


#: ``switch_interval_s="auto"`` where a served model computes in the server process: its
#: compute thread re-takes the GIL between torch ops, and with Python's 5 ms a busy event loop
#: made it wait that long each time (a CPU forward pass several-fold slower under load).
IN_PROCESS_SWITCH_S = 0.001


#: What each checked :class:`ServerConfig` field must be, in words (for its error).
RULES = {
    "port": "0..65535", "max_batch_tokens": ">= 1", "max_batch_requests": ">= 1",
    "max_wait_ms": ">= 0, finite", "max_queue": ">= 1", "max_inputs": ">= 1",
    "max_request_bytes": "a whole number >= 1024 bytes", "max_request_tokens": ">= 1",
    "request_timeout_s": "> 0 and finite; no limit: 0 on the command line, None in Python",
    "unhealthy_exit_s": "seconds > 0, None (never) or 'auto'",
    "graceful_timeout_s": ">= 0, finite",
    "switch_interval_s": "seconds > 0, None (Python's) or 'auto'", "index": "not empty",
    "index_table": "not empty", "served_name": "not empty",
    "workers": ">= 1", "worker_stall_s": "seconds >= 1 or None (never)", "index_threads": ">= 1",
    "cors_origins": "each '*' or an origin: a scheme and a host (https://app.example, "
                    "chrome-extension://ID)",
    "allowed_hosts": "host names without a port (IPv6 in brackets: [::1]), or '*'",
}

#: The names of the local machine a browser sends as ``Host`` to a loopback server.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether the server binds only to this machine (``127.0.0.0/8``, ``::1``, localhost)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _a_host_name(entry: object) -> bool:
    """Whether ``entry`` is a name a ``Host`` header can match (:func:`host_name`'s form)."""
    if not isinstance(entry, str) or not entry or any(c in entry for c in " /*"):
        return False
    if ":" in entry and not (entry.startswith("[") and entry.endswith("]")):
        return False  # a port (host_name drops it), or IPv6 without brackets
    return host_name(entry.encode()) == entry.lower()


def host_name(header: bytes) -> str:
    """A ``Host`` header's name, lower case, without its port and a final dot (``[::1]`` keeps
    its brackets); anything else after ``]`` than a port leaves the value whole (no name)."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
            return text
        return text[: end + 1]
    name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return name[:-1] if name.endswith(".") else name


class InvalidServerSettings(ValueError):
    """:class:`ServerConfig` fields out of their range; ``fields`` names them."""

    def __init__(self, fields: list[str], names: dict[str, str] | None = None) -> None:
        self.fields = fields
        shown = names or {}
        super().__init__("invalid server setting(s): " + ", ".join(
            f"{shown.get(f, f)} ({RULES.get(f, 'out of range')})" for f in fields))


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to know besides the model. Defaults suit one CPU or GPU box."""

    #: Interface to bind. Loopback by default: exposing a model is an explicit choice.
    host: str = "127.0.0.1"
    #: TCP port (0 = pick a free one).
    port: int = 8000
    #: Bearer token clients must send (compared in constant time). None = no auth.
    #: Probes (``/health``, ``/ping``, ``GET /``) and API tooling (``/openapi.json``, ``/docs``)
    #: stay open so they need no secret (``smysl.server.app.OPEN_PATHS``). Not in ``repr``.
    api_key: str | None = field(default=None, repr=False)
    #: Extra model name clients may send; it is also the name the server reports first.
    served_name: str | None = None
    #: Token budget of one coalesced batch handed to the backend (the backend may split it
    #: further into its own forward passes). None = the backend's own budget, else 8192.
    max_batch_tokens: int | None = None
    #: Most requests coalesced into one batch.
    max_batch_requests: int = 256
    #: How long the first request of an idle moment waits for companions before compute, in
    #: milliseconds. Under load batches form while the previous one computes, so this only
    #: trades a little idle latency for fewer, fuller batches. None: 2 ms, or 0 for a model on
    #: a GPU (a CUDA-graph pass of a short query takes ~3 ms; waiting would add most of that).
    max_wait_ms: float | None = None
    #: Requests allowed to wait for compute; one more is answered 429 with Retry-After.
    max_queue: int = 512
    #: Most inputs (texts or token lists) in one request (OpenAI's own limit is 2048).
    max_inputs: int = 2048
    #: Largest request body in bytes; larger bodies get 413 before they are read in full.
    max_request_bytes: int = 16 * 1024 * 1024
    #: Most tokens one request may embed or tokenise (after truncation, EOS included); more
    #: is answered 400 (TEI: 422). OpenAI's own per-request limit: its clients batch to it
    #: (LangChain's OpenAIEmbeddings: 1,000 texts, up to 300,000 tokens, a call), and one of
    #: 65,536 refused their ordinary batches. Texts with more than 8 characters per allowed
    #: token are refused before tokenisation, so a huge body costs neither time nor memory.
    max_request_tokens: int = 300_000
    #: Time budget of one embedding or rerank request from its arrival, the wait for a
    #: tokenizer thread included, in seconds (a large ``/tokenize`` or ``/decode`` is held to
    #: it while it waits for a thread); past it the request is answered 504 and the rest of
    #: its work is dropped (a forward pass that has started finishes). None = no limit.
    request_timeout_s: float | None = 120.0
    #: Output size when a request names none (Matryoshka); None = the model's native size.
    default_dimensions: int | None = None
    #: Embed ``""`` (as the engine does: EOS alone) instead of rejecting it with 400.
    allow_empty: bool = False
    #: Take OpenAI's token-id input (lists of ints) as the served model's token ids. Off by
    #: default (400): ids from an OpenAI client are tiktoken's (LangChain's
    #: ``OpenAIEmbeddings`` sends them unless ``check_embedding_ctx_length=False``), which
    #: name other tokens in Qwen3's vocabulary ("the" is 1820 in cl100k, 1782 in Qwen3) and
    #: would embed a garbled text. The ids themselves cannot tell: of 1,902 XQuAD ru/en texts
    #: in cl100k ids, 643 come back unchanged when decoded as Qwen3 ids and tokenised again.
    token_ids: bool = False
    #: Seconds uvicorn waits for in-flight requests on shutdown before it cuts them off
    #: (those get 503 in their API's error shape).
    graceful_timeout_s: float = 30.0
    #: ``serve`` exits with status 3 once a backend (the model's, the reranker's) has been
    #: unhealthy this long, so a supervisor restarts the server; None = keep answering 503.
    #: ``"auto"``: 60 s for a local engine (it restarts itself up to 3 times a minute first),
    #: never for a remote API, which a restart cannot bring back
    #: (:func:`smysl.server.health.exit_after`).
    unhealthy_exit_s: float | Literal["auto"] | None = "auto"
    #: Python's GIL switch interval while serving (seconds; None keeps Python's 5 ms).
    #: ``"auto"``: :data:`IN_PROCESS_SWITCH_S` where a served model computes in the server
    #: process, else Python's (:func:`switch_interval`).
    switch_interval_s: float | Literal["auto"] | None = "auto"
    #: HTTP worker processes (:mod:`smysl.server.workers`): one process answers ~1,000-2,000
    #: short requests a second, a GPU embeds several times that. Workers share one engine
    #: process, so the model must be a local one run in a child process (the default).
    #: ``smysl serve --workers auto`` sets it once the models are loaded
    #: (:func:`smysl.server.workers.auto_workers`).
    workers: int = 1
    #: With ``workers`` > 1: a worker whose event loop has not run for this many seconds (a
    #: request handler blocked, a deadlock, a stopped process) has its threads' stacks dumped
    #: to the server's output, is killed and restarted (:mod:`smysl.server.workers`). Each
    #: worker has its own share of the port's new connections: a wedged one would hold its
    #: share unanswered for ever. The loop's own work never blocks it this long (engine
    #: calls and index searches run off it); at least 1; None = never.
    worker_stall_s: float | None = 30.0
    #: A line per request on stdout, uvicorn's with the time appended (``"POST /embed
    #: HTTP/1.1" 200 OK 3.1 ms``), as TEI and Ollama log requests; written by
    #: :mod:`smysl.server.access_log` (uvicorn's own cost a short request 13-15% of the
    #: server's CPU; this one less than could be measured). False drops it (start-up,
    #: warnings and errors are still logged).
    access_log: bool = True
    #: A toolkit index (``smysl index`` location: LanceDB folder, ``qdrant:URL``...) opened at
    #: start with the served model and searched by ``POST /search``; None = no search route.
    index: str | None = None
    #: The table (LanceDB, PostgreSQL) or collection (Qdrant) of ``index`` that is served:
    #: ``smysl index add --table``'s.
    index_table: str = "chunks"
    #: Threads that run ``/search``'s store calls, per HTTP worker, where the store takes
    #: calls from several threads at once (``VectorStore.concurrent_reads``: LanceDB;
    #: PostgreSQL, a connection per thread and one it was opened on, so workers x (this + 1)
    #: connections); other stores get one thread, one call at a time.
    index_threads: int = 4
    #: Origins (``https://app.example``) whose pages may call the server from a browser
    #: (CORS, TEI's ``--cors-allow-origin``); ``"*"`` allows any. Empty: none, so only pages
    #: the server serves itself (``/ui``) and pages on this machine can; a browser's call (not
    #: GET, HEAD or OPTIONS) from a page of any other origin gets 403. Preflights need no API
    #: key; the calls do.
    cors_origins: tuple[str, ...] = ()
    #: Host names (the ``Host`` header without its port) the server answers; others get 400.
    #: None: any, except that :func:`smysl.server.serve` bound to a loopback address takes
    #: :data:`LOOPBACK_HOSTS` (a web page that rebinds its own domain to 127.0.0.1, DNS
    #: rebinding, read a keyless local server's index and vectors). ``"*"`` allows any.
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "max_batch_tokens": self.max_batch_tokens is None or self.max_batch_tokens >= 1,
            "max_batch_requests": self.max_batch_requests >= 1,
            "max_wait_ms": _finite(self.max_wait_ms),
            "max_queue": self.max_queue >= 1,
            "max_inputs": self.max_inputs >= 1,
            "max_request_bytes": isinstance(self.max_request_bytes, numbers.Integral)
            and not isinstance(self.max_request_bytes, bool)
            and self.max_request_bytes >= 1024,
            "max_request_tokens": self.max_request_tokens >= 1,
            "request_timeout_s": self.request_timeout_s is None
            or _seconds(self.request_timeout_s),
            "unhealthy_exit_s": self.unhealthy_exit_s in (None, "auto")
            or _seconds(self.unhealthy_exit_s),
            "graceful_timeout_s": _finite(self.graceful_timeout_s),
            "switch_interval_s": self.switch_interval_s in (None, "auto")
            or _seconds(self.switch_interval_s),
            "index": self.index is None or bool(self.index.strip()),
            # "" answered with the model's own name, as if not given
            "served_name": self.served_name is None or bool(self.served_name.strip()),
            "index_table": bool(self.index_table.strip()),
            "workers": self.workers >= 1,
            # >= 1: a worker beats every 0.1 s and is looked at every 0.5 s
            "worker_stall_s": self.worker_stall_s is None or (
                _seconds(self.worker_stall_s) and float(self.worker_stall_s) >= 1),
            "index_threads": self.index_threads >= 1,
            # a scheme and a host: a page's (https://app.example), an extension's
            # (chrome-extension://ID), an app's
            "cors_origins": all(o == "*" or re.fullmatch(r"(?i)[a-z][a-z0-9+.-]*://[^/\s]+/?", o)
                                for o in self.cors_origins),
            # names as host_name() gives them (no port, no spaces, IPv6 in brackets, no
            # patterns): an entry that can never match refused; () would refuse everything
            "allowed_hosts": self.allowed_hosts is None or (bool(self.allowed_hosts) and all(
                h == "*" or _a_host_name(h) for h in self.allowed_hosts)),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise InvalidServerSettings(bad)
        # as browsers send them (lower case, no final slash): the CORS layer and the origin
        # check match them as given
        object.__setattr__(self, "cors_origins", tuple(
            o if o == "*" else o.rstrip("/").lower() for o in self.cors_origins))
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty (leave it unset to disable auth)")
        if self.api_key is not None and self.api_key != self.api_key.strip():
            # HTTP drops the spaces around a header's value: no client could send this key
            raise ValueError("api_key must not start or end with spaces (no client can send "
                             "them in a header)")
        if self.api_key is not None and not all(" " <= c <= "~" for c in self.api_key):
            # a header's bytes are Latin-1 to browsers and Python's http.client, UTF-8 to
            # curl: a key of "clé" matched one client and never the other (the /ui page)
            raise ValueError("api_key must be printable ASCII (letters, digits, punctuation): "
                             "clients send other characters in a header as different bytes")

    @classmethod
    def from_env(cls, **values: object) -> ServerConfig:
        """Build from keyword values; ``api_key``, ``host`` and ``port`` that are absent or None
        come from ``$SMYSL_API_KEY``, ``$SMYSL_HOST`` and ``$SMYSL_PORT`` when set, else take
        the defaults (values given win over the environment)."""
        for name, env in (("api_key", API_KEY_ENV), ("host", HOST_ENV), ("port", PORT_ENV)):
            if values.get(name) is not None:
                continue
            values.pop(name, None)
            given = os.environ.get(env, "")
            raw = given.strip()
            if not raw:
                if given and name == "api_key":  # read as unset: a server open to anyone
                    raise ValueError(f"${env} holds only spaces: set a key, or unset it to "
                                     "serve without one")
                continue
            if name != "port":
                values[name] = raw
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise ValueError(f"${env} must be a port number, got {raw!r}") from None
        return cls(**values)  # type: ignore[arg-type]


def _seconds(value: object) -> bool:
    """A finite number of seconds > 0 (numpy's numbers too; not a bool; inf is no time)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and 0 < float(value) < math.inf)


def _finite(value: float | None) -> bool:
    """None or a finite number >= 0 (``--max-wait-ms inf`` held every request until its
    timeout)."""
    return value is None or (isinstance(value, numbers.Real) and not isinstance(value, bool)
                             and 0 <= float(value) < math.inf)


def switch_interval(setting: float | Literal["auto"] | None,
                    served: Sequence[BaseEmbedder | BaseReranker]) -> float | None:
    """The GIL switch interval a server of ``served`` models sets (None: Python's own).
    ``"auto"``: :data:`IN_PROCESS_SWITCH_S` if one of them computes in this process (not
    remote, no engine process: a model class of yours that names no device too), else
    Python's 5 ms: an HTTP process whose models compute elsewhere (an engine process, a
    remote API) has only its event loop and the batch threads, and a shorter interval takes
    the GIL from the loop more often (64 single-text
    clients, ``benchmarks/sim_gpu.py --shape wide``, rounds interleaved: one HTTP process
    3,220-3,400 requests/s at 1 ms, 3,690-4,050 at 5 ms; two workers 5,110-5,360 and
    5,750-5,960; one client alike)."""
    if setting != "auto":
        return setting
    here = any(not m.remote and m.info().process is None for m in served)
    return IN_PROCESS_SWITCH_S if here else None
