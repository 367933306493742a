"""How to talk to one provider: :class:`ProviderConfig`, one frozen value per scheme."""

from __future__ import annotations

import dataclasses
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from smysl.shown import shown_url


@dataclass(frozen=True)
class ProviderConfig:
    """How to talk to one provider. Every field can be overridden per model string option."""

    #: Scheme and price-table key (``openrouter``, ``dashscope``, ...).
    name: str
    #: API root, e.g. ``https://openrouter.ai/api/v1``; the request path is appended.
    base_url: str
    #: Request path under ``base_url``.
    path: str = "/embeddings"
    #: Environment variable(s) holding the API key, comma-separated, first set wins (sent as
    #: ``Authorization: Bearer``).
    api_key_env: str | None = None
    #: Environment variable that overrides ``base_url`` (e.g. ``OLLAMA_HOST``).
    base_url_env: str | None = None
    #: Refuse to build without a key (paid APIs); local servers run without one.
    api_key_required: bool = False
    #: Most inputs in one request (DashScope: 10, TEI's default ``max_client_batch_size``: 32).
    max_batch_texts: int = 256
    #: Most tokens in one request, estimated (exact with a tokenizer, else a UTF-8 byte bound).
    max_batch_tokens: int | None = None
    #: Most tokens one input may have, when the provider documents it.
    max_tokens: int | None = None
    #: Whether the output width may be read off a Qwen3-Embedding size in the model name
    #: (``...-8B`` -> 4096). Off for self-hosted servers, whose model names are arbitrary: their
    #: width is probed with one request unless ``dimensions=`` is given.
    width_from_name: bool = True
    #: Whether requests may carry ``dimensions`` (the width rows come back with).
    supports_dimensions: bool = False
    #: The only ``dimensions`` the API takes (empty: any): a width between them is asked as
    #: the next one up, and the rows cut here (the same Matryoshka prefix, re-normalised).
    dimension_steps: tuple[int, ...] = ()
    #: Output width by model name (lower case) where the name does not say it (DashScope's
    #: largest sizes): asked for explicitly, and the bound of a ``dimensions`` given.
    model_widths: tuple[tuple[str, int], ...] = ()
    #: The smallest ``dimensions`` step a model takes, by model name (lower case), where it is
    #: above the API's smallest: a narrower width is asked as this one and cut here.
    model_min_steps: tuple[tuple[str, int], ...] = ()
    #: Wall-clock seconds one HTTP request may take, from sending to the last byte of the
    #: answer (not per read: a body that drips in slowly times out too). Retried.
    timeout: float = 60.0
    #: Seconds to wait for a TCP/TLS connection (within ``timeout``).
    connect_timeout: float = 10.0
    #: What to check when the server cannot be reached at all, added to that error (a local
    #: server that is not running: Ollama's daemon).
    unreachable_hint: str = ""
    #: Whether a port of this machine that refused twice before any answer is taken as a
    #: server not running, and the rest of ``max_retries`` not waited out: true of servers that
    #: listen at once (Ollama's daemon loads models on demand); false of those that listen only
    #: once their model is loaded (TEI, vLLM, smysl serve), whose clients started beside them
    #: must wait.
    refused_means_down: bool = False
    #: Wall-clock seconds one ``embed`` call may take in all: every request, retry and backoff
    #: wait (None: no limit). Rows finished before it runs out are kept for a resume.
    job_timeout: float | None = 300.0
    #: Extra tries per request after the first on 429/5xx/timeouts/connection errors/malformed
    #: bodies. Other 4xx are never retried.
    max_retries: int = 6
    #: First backoff in seconds; doubles per try, with jitter (each wait is 50-100% of it).
    backoff_base: float = 0.5
    #: Longest backoff in seconds.
    backoff_max: float = 30.0
    #: Longest ``Retry-After`` honoured, in seconds (a server asking for more gets this).
    max_retry_after: float = 120.0
    #: Requests in flight at once for one ``embed`` call.
    max_concurrency: int = 4
    #: USD per 1M tokens; None = look it up in :data:`smysl.providers.pricing.PRICES`.
    price_per_mtok: float | None = None
    #: USD per request (APIs billed per run, Replicate); None = look it up in
    #: :data:`smysl.providers.pricing.REQUEST_PRICES`.
    price_per_request: float | None = None
    #: MiB of rows kept from ``embed`` calls that failed part-way, so that calling ``embed``
    #: again with the same texts sends only the missing ones (0: keep none).
    resume_cache_mb: float = 256.0
    #: Extra HTTP headers sent with every request (an ``Authorization`` among them: not in
    #: ``repr``); a dict is taken too.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def width_of(self, model: str) -> int | None:
        """The width :attr:`model_widths` gives ``model`` (None: not listed)."""
        return dict(self.model_widths).get(model.lower())

    def min_step_of(self, model: str) -> int:
        """The smallest ``dimensions`` step :attr:`model_min_steps` gives ``model`` (0: any)."""
        return dict(self.model_min_steps).get(model.lower(), 0)

    def __post_init__(self) -> None:
        given = self.headers
        pairs = list(given.items()) if isinstance(given, Mapping) else list(given or ())
        if not all(isinstance(p, tuple | list) and len(p) == 2
                   and all(isinstance(x, str) for x in p) for p in pairs):
            raise ValueError(f"{self.name}: headers must be a dict (or pairs) of name -> value "
                             "strings")
        # a value from a file keeps its line break: stripped; one inside could not be sent,
        # and the HTTP library's error quoted it, escaped past redaction
        object.__setattr__(self, "headers", tuple(
            (str(k).strip(), clean_secret(str(v), f"the value of header {k!r}", spaces=True,
                                          who=self.name)) for k, v in pairs))
        if self.base_url:  # a port past 65535 was retried as "connection refused"
            port_of(self.base_url)
        checks = {
            "max_batch_texts": self.max_batch_texts >= 1,
            "max_batch_tokens": self.max_batch_tokens is None or self.max_batch_tokens >= 1,
            "max_tokens": self.max_tokens is None or self.max_tokens >= 1,
            "timeout": self.timeout > 0,
            "connect_timeout": self.connect_timeout > 0,
            "job_timeout": self.job_timeout is None or self.job_timeout > 0,
            "max_retries": self.max_retries >= 0,
            "backoff_base": self.backoff_base >= 0,
            "backoff_max": self.backoff_max >= 0,
            "max_retry_after": self.max_retry_after >= 0,
            "max_concurrency": self.max_concurrency >= 1,
            "price_per_mtok": self.price_per_mtok is None or self.price_per_mtok >= 0,
            "price_per_request": self.price_per_request is None or self.price_per_request >= 0,
            "resume_cache_mb": self.resume_cache_mb >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid provider setting(s) for {self.name}: {', '.join(bad)}")

    def __repr__(self) -> str:
        # the URL without its user part (a password) or query; the headers not at all
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        shown["base_url"] = shown_url(self.base_url) if self.base_url else self.base_url
        return f"ProviderConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def key_variables(self) -> list[str]:
        """The environment variables :attr:`api_key_env` names, in order."""
        return [e.strip() for e in (self.api_key_env or "").split(",") if e.strip()]

    @property
    def key_names(self) -> str:
        """Those variables as messages name them: ``$A or $B``."""
        return " or ".join(f"${e}" for e in self.key_variables)

    def env_base_url(self) -> str | None:
        """The value of :attr:`base_url_env`, None where unset or blank (a blank one was
        "http:", then a DNS error naming nothing)."""
        return (os.environ.get(self.base_url_env, "").strip() or None) if self.base_url_env \
            else None

    def api_key(self, given: str | None) -> str | None:
        """``given``, else the first set variable of :attr:`api_key_env`; ``ValueError`` naming
        them when the API needs a key and none is found."""
        envs = self.key_variables
        source = "api_key="
        for env in envs if given is None else ():
            given = os.environ.get(env) or None
            if given:
                source = f"${env}"
                break
        if given is not None:
            if not isinstance(given, str):
                raise ValueError(f"{self.name}: api_key must be a string")
            # a key read from a .env or secret file keeps its line break: it went into the
            # header, and httpx's error about it quoted the whole key
            given = clean_secret(given, f"the API key from {source}", spaces=False,
                                 who=self.name) or None
        if given is None and self.api_key_required:
            raise ValueError(f"{self.name}: no API key (or an empty one); set "
                             f"{self.key_names} or pass api_key=...")
        return given


def clean_secret(value: str, what: str, *, spaces: bool, who: str) -> str:
    """``value`` (a key, a header's value) without the whitespace around it; a ``ValueError``
    that names ``what`` but never shows the value when a control character (or, unless
    ``spaces``, any whitespace) is inside it."""
    value = value.strip()
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 or (not spaces and c.isspace())
           for c in value):
        raise ValueError(f"{who}: {what} has a {'' if spaces else 'space, '}line break or "
                         "control character inside it" + ("" if spaces else
                                                          " (a pasted quote or two keys?)")
                         + "; it is not shown here")
    return value


def port_of(url: str) -> int | None:
    """The port of ``url`` (None: the scheme's), or a ``ValueError`` for one that is no port."""
    try:
        return urllib.parse.urlsplit(url).port
    except ValueError as e:  # "host:abc", a port past 65535
        raise ValueError(f"bad URL {shown_url(url)!r}: {e}") from None


def url_and_model(rest: str, *, url_alone: bool = False) -> tuple[str | None, str]:
    """The parts of a model string's ``URL#MODEL`` (or ``MODEL`` alone): the URL with or
    without its scheme (``gpu-box:8001/v1#m`` was taken as the model name ``gpu-box:8001/v1``
    and sent to the preset's own address: OpenAI's, with the user's key); a URL alone where
    it has a scheme; ``url_alone``: a server of one model (TEI), where anything given is its
    address. Without ``#`` or ``://`` the rest is the model, colons and all (an Ollama tag
    ``my-embed:2`` looks like ``host:port``)."""
    rest = rest.strip()
    if "#" in rest:
        url, _, model = rest.partition("#")
        return url.strip() or None, model.strip()
    if "://" in rest or (rest and url_alone):
        return rest, ""
    return None, rest


def with_scheme(url: str, *, secure: bool, what: str) -> str:
    """``url`` with its scheme: one written must be http or https; where none is (``host:port``)
    https for an API whose own address is https (a paid one: its key must not travel in the
    clear, as it did to ``http://openrouter.ai``), else http (a server on the network).
    ``what`` names where the URL came from (a flag, ``$VARIABLE``) in the errors."""
    url = url.strip().rstrip("/")
    if not url:
        raise ValueError(f"{what} is empty")
    head, sep, _ = url.partition("://")
    if not sep:
        return ("https://" if secure else "http://") + url
    if head.lower() not in ("http", "https"):
        raise ValueError(f"{what} {shown_url(url)!r} is no http:// or https:// URL")
    return url


def embedding_base_url(scheme: str, url: str, *, secure: bool = False,
                       what: str = "the base URL") -> str:
    """``url`` (given, or read from the scheme's ``base_url_env``) as the scheme's embedding
    requests need it: a scheme added to ``host:port`` (:func:`with_scheme`), Ollama's port
    where ``OLLAMA_HOST`` names none, ``/v1`` under a smysl server."""
    written = "://" in url

    def rule(url: str) -> str:
        # Ollama's own rule (OLLAMA_HOST, often "host:port" or "0.0.0.0"): 11434 only where
        # no scheme was written; with one, the scheme's port (https://ollama.example.com: 443)
        if not written and scheme == "ollama" and port_of(url) is None:
            host, slash, path = url[len("http://"):].partition("/")
            url = f"http://{host or '127.0.0.1'}:11434{slash}{path}"
        if scheme == "smysl" and not url.endswith("/v1"):
            url += "/v1"
        return url

    return on_path(with_scheme(url, secure=secure, what=what), rule)


def on_path(url: str, rule: Callable[[str], str]) -> str:
    """``rule`` applied to ``url`` without its query (``?api-version=``), the query put back
    after: a rule on the whole string made ``/v1?token=x`` ``/v1?token=x/v1``."""
    base, sep, query = url.partition("?")
    return rule(base.rstrip("/")) + sep + query
