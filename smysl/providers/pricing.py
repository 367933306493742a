"""Price table for usage reports: USD per 1M input tokens (embeddings have no output tokens).

Keys are ``"provider"`` (default for that provider) or ``"provider:model"`` (exact model id,
case-insensitive). Override per object with the ``price_per_mtok=`` option, or edit
:data:`PRICES` (``smysl.providers.pricing.PRICES["deepinfra"] = 0.04``). Prices change; the
sources below were read from stored copies of the providers' pages in November 2026, and
entries marked *unverified* come from the project's seed table without a page to confirm them.
Self-hosted servers (Ollama, TEI, smysl, a bare OpenAI-compatible URL) cost nothing per token.
APIs billed per run (Replicate) are priced per request in :data:`REQUEST_PRICES`.
"""

from __future__ import annotations

PRICES: dict[str, float] = {
    # openrouter.ai/qwen/qwen3-embedding-8b: "$0.01 per 1M tokens", 32K context.
    "openrouter": 0.01,
    # alibabacloud.com/help/en/model-studio/text-embedding-synchronous-api (updated 2026-03-24):
    # text-embedding-v4 (Qwen3-Embedding series) $0.07 per 1M input tokens (Singapore,
    # Hong Kong; Beijing $0.072); text-embedding-v3 $0.07. Max 10 rows, 8,192 tokens per row.
    "dashscope": 0.07,
    # deepinfra.com/Qwen/Qwen3-Embedding-0.6B/api: "$0.002 / Mtoken"; the -batch variant
    # $0.005. Larger sizes: seed table, about $0.05 (unverified).
    "deepinfra": 0.05,
    "deepinfra:qwen/qwen3-embedding-0.6b": 0.002,
    "deepinfra:qwen/qwen3-embedding-0.6b-batch": 0.005,
    # Fireworks serverless fireworks/qwen3-embedding-8b: seed table $0.10 (unverified; the
    # stored fireworks.ai/pricing page did not list embedding prices).
    "fireworks": 0.10,
    # SiliconFlow Qwen/Qwen3-Embedding-*: seed table $0.05-0.15 by size (unverified); the
    # upper end is used where the size is unknown so that reports do not understate cost.
    "siliconflow": 0.15,
    "siliconflow:qwen/qwen3-embedding-0.6b": 0.05,
    # Self-hosted.
    "openai": 0.0,
    "ollama": 0.0,
    "tei": 0.0,
    "smysl": 0.0,
}


#: USD per request for APIs billed per run rather than per token (same keys as :data:`PRICES`).
REQUEST_PRICES: dict[str, float] = {
    # Replicate bills GPU seconds per prediction; lucataco/qwen3-embedding-8b's model page
    # quotes about $0.001 per run (as cited in issue 11; unverified, and it grows with batch
    # size and cold starts). Override with price_per_request= for your hardware and load.
    "replicate": 0.001,
}


def price_for(provider: str, model: str) -> float | None:
    """USD per 1M tokens for ``model`` at ``provider``, or None when the table has no entry."""
    return _lookup(PRICES, provider, model)


def request_price_for(provider: str, model: str) -> float | None:
    """USD per request for ``model`` at ``provider``, or None (billed per token or free)."""
    return _lookup(REQUEST_PRICES, provider, model)


def _lookup(table: dict[str, float], provider: str, model: str) -> float | None:
    exact = table.get(f"{provider}:{model}".lower())
    return exact if exact is not None else table.get(provider)
