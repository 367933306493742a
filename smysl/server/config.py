"""Server settings: one frozen value built at the edge (CLI or caller) and passed everywhere."""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Environment variable read for the API key when ``--api-key`` is not given.
API_KEY_ENV = "SMYSL_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to know besides the model. Defaults suit one CPU or GPU box."""

    #: Interface to bind. Loopback by default: exposing a model is an explicit choice.
    host: str = "127.0.0.1"
    #: TCP port (0 = pick a free one).
    port: int = 8000
    #: Bearer token clients must send (compared in constant time). None = no auth.
    #: ``/health`` and ``/openapi.json`` stay open so probes and tooling need no secret.
    api_key: str | None = None
    #: Extra model name clients may send; it is also the name the server reports first.
    served_name: str | None = None
    #: Token budget of one coalesced batch handed to the backend (the backend may split it
    #: further into its own forward passes). None = the backend's own budget, else 8192.
    max_batch_tokens: int | None = None
    #: Most requests coalesced into one batch.
    max_batch_requests: int = 256
    #: How long the first request of an idle moment waits for companions before compute, in
    #: milliseconds. Under load batches form while the previous one computes, so this only
    #: trades a little idle latency for fewer, fuller batches.
    max_wait_ms: float = 2.0
    #: Requests allowed to wait for compute; one more is answered 429 with Retry-After.
    max_queue: int = 512
    #: Most inputs (texts or token lists) in one request (OpenAI's own limit is 2048).
    max_inputs: int = 2048
    #: Largest request body in bytes; larger bodies get 413 before they are read in full.
    max_request_bytes: int = 16 * 1024 * 1024
    #: Output size when a request names none (Matryoshka); None = the model's native size.
    default_dimensions: int | None = None
    #: Embed ``""`` (as the engine does: EOS alone) instead of rejecting it with 400.
    allow_empty: bool = False
    #: Seconds uvicorn waits for in-flight requests on shutdown before it cuts them off.
    graceful_timeout_s: float = 30.0
    #: Python's GIL switch interval while serving (seconds; None keeps Python's 5 ms). The compute
    #: thread re-takes the GIL between torch ops; with the default a busy event loop makes it
    #: wait up to 5 ms each time, and a CPU forward pass slows several-fold under load.
    switch_interval_s: float | None = 0.001

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "max_batch_tokens": self.max_batch_tokens is None or self.max_batch_tokens >= 1,
            "max_batch_requests": self.max_batch_requests >= 1,
            "max_wait_ms": self.max_wait_ms >= 0,
            "max_queue": self.max_queue >= 1,
            "max_inputs": self.max_inputs >= 1,
            "max_request_bytes": self.max_request_bytes >= 1024,
            "graceful_timeout_s": self.graceful_timeout_s >= 0,
            "switch_interval_s": self.switch_interval_s is None or self.switch_interval_s > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid server setting(s): {', '.join(bad)}")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must not be empty (leave it unset to disable auth)")

    @classmethod
    def from_env(cls, **values: object) -> ServerConfig:
        """Build from keyword values, taking the API key from ``$SMYSL_API_KEY`` when not given."""
        if values.get("api_key") is None and os.environ.get(API_KEY_ENV):
            values["api_key"] = os.environ[API_KEY_ENV]
        return cls(**values)  # type: ignore[arg-type]
