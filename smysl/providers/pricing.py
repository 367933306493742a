"""Price table for usage reports: USD per 1M input tokens (embeddings have no output tokens).

Keys are ``"provider:model"`` (an exact model id, case-insensitive), ``"provider:pattern"``
(``*`` wildcards: a price for a model family) or ``"provider"`` (every model of that provider).
A model with no entry has no price: its usage line says "cost unknown", never $0 or another
model's price. Override per object with the ``price_per_mtok=`` option, or edit :data:`PRICES`
(``smysl.providers.pricing.PRICES["deepinfra"] = 0.04``). Prices change; the sources below were
read from stored copies of the providers' pages in November 2026, and entries marked
*unverified* come from the project's seed table without a page to confirm them. Self-hosted
servers (Ollama, TEI, smysl, a bare OpenAI-compatible URL) cost nothing per token; OpenAI's own
API (``openai:`` at ``https://api.openai.com``) is priced as ``openai.com:MODEL``. APIs billed per
run (Replicate) are priced per request in :data:`REQUEST_PRICES`. Remote rerankers
(:mod:`smysl.providers.rerankers`) have their own tables, :data:`RERANK_PRICES` (per 1M tokens)
and :data:`RERANK_SEARCH_UNIT_PRICES` (Cohere's search units).
"""

from __future__ import annotations

import fnmatch
import urllib.parse

PRICES: dict[str, float] = {
    # openrouter.ai/qwen/qwen3-embedding-8b: "$0.01 per 1M tokens", 32K context;
    # openrouter.ai/qwen/qwen3-embedding-4b: "$0.02 per 1M tokens". Other models OpenRouter
    # routes to (OpenAI's, Mistral's...) are priced differently: no entry, cost unknown.
    "openrouter:qwen/qwen3-embedding-8b": 0.01,
    "openrouter:qwen/qwen3-embedding-4b": 0.02,
    # alibabacloud.com/help/en/model-studio/text-embedding-synchronous-api (updated 2026-03-24):
    # text-embedding-v4 (Qwen3-Embedding series) $0.07 per 1M input tokens (Singapore,
    # Hong Kong; Beijing $0.072); text-embedding-v3 $0.07. Max 10 rows, 8,192 tokens per row.
    "dashscope:text-embedding-v4": 0.07,
    "dashscope:text-embedding-v3": 0.07,
    # deepinfra.com/Qwen/Qwen3-Embedding-0.6B/api: "$0.002 / Mtoken"; the -batch variant
    # $0.005. Larger sizes: seed table, about $0.05 (unverified).
    "deepinfra:qwen/qwen3-embedding-0.6b": 0.002,
    "deepinfra:qwen/qwen3-embedding-0.6b-batch": 0.005,
    "deepinfra:*qwen3-embedding*": 0.05,
    # Fireworks serverless fireworks/qwen3-embedding-8b: seed table $0.10 (unverified; the
    # stored fireworks.ai/pricing page did not list embedding prices).
    "fireworks:*qwen3-embedding*": 0.10,
    # SiliconFlow Qwen/Qwen3-Embedding-*: seed table $0.05-0.15 by size (unverified); the
    # upper end is used where the size is unknown so that reports do not understate cost.
    "siliconflow:qwen/qwen3-embedding-0.6b": 0.05,
    "siliconflow:*qwen3-embedding*": 0.15,
    # platform.openai.com/docs/pricing (embeddings, per 1M input tokens).
    "openai.com:text-embedding-3-small": 0.02,
    "openai.com:text-embedding-3-large": 0.13,
    "openai.com:text-embedding-ada-002": 0.10,
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


#: Rerankers, USD per 1M tokens (same keys; a separate table because one provider's embedding
#: and reranking prices differ). Only documented prices; a model without an entry has no cost
#: in its usage report ("cost unknown") unless ``price_per_mtok=`` is given.
RERANK_PRICES: dict[str, float] = {
    # alibabacloud.com/help/en/model-studio/text-rerank-api (Mar 2026): qwen3-rerank $0.1 per 1M
    # tokens (Singapore), gte-rerank-v2 $0.115 (Beijing).
    "dashscope:qwen3-rerank": 0.1,
    "dashscope:gte-rerank-v2": 0.115,
    # deepinfra.com/Qwen/Qwen3-Reranker-0.6B/api: "$0.010 / Mtoken";
    # deepinfra.com/Qwen/Qwen3-Reranker-8B/api: "$0.050 / 1M tokens" (4B: no page found).
    "deepinfra:qwen/qwen3-reranker-0.6b": 0.01,
    "deepinfra:qwen/qwen3-reranker-8b": 0.05,
    # Self-hosted.
    "tei": 0.0,
    "smysl": 0.0,
}

#: Rerankers billed per search unit (Cohere: "one query with up to 100 documents to be ranked";
#: longer documents are chunked and each chunk counts), USD per unit.
RERANK_SEARCH_UNIT_PRICES: dict[str, float] = {
    # Unverified: third-party pages (developer.puter.com, Jun 2026; memberjunction docs, Apr 2026)
    # quote $2.00 per 1K searches for Rerank 3.5 / 4 Fast ($2.50 for 4 Pro); the stored
    # cohere.com/pricing copy (Oct 2026) lists no pay-as-you-go price.
    "cohere": 0.002,
    "cohere:rerank-v4.0-pro": 0.0025,
}


def rerank_price_for(provider: str, model: str) -> float | None:
    """USD per 1M tokens for reranker ``model`` at ``provider``, or None when unknown."""
    return _lookup(RERANK_PRICES, provider, model)


def rerank_search_unit_price_for(provider: str, model: str) -> float | None:
    """USD per search unit for reranker ``model`` at ``provider``, or None."""
    return _lookup(RERANK_SEARCH_UNIT_PRICES, provider, model)


def price_for(provider: str, model: str, base_url: str | None = None) -> float | None:
    """USD per 1M tokens for ``model`` at ``provider`` (``base_url``: where it is sent; OpenAI's
    own API is priced, other OpenAI-compatible URLs are self-hosted), or None when unknown."""
    if provider == "openai" and base_url is not None and \
            urllib.parse.urlsplit(base_url).hostname == "api.openai.com":
        provider = "openai.com"
    return _lookup(PRICES, provider, model)


def request_price_for(provider: str, model: str) -> float | None:
    """USD per request for ``model`` at ``provider``, or None (billed per token or free)."""
    return _lookup(REQUEST_PRICES, provider, model)


def _lookup(table: dict[str, float], provider: str, model: str) -> float | None:
    """The exact entry, else the first pattern that matches, else the provider's own."""
    key = f"{provider}:{model}".lower()
    exact = table.get(key)
    if exact is not None:
        return exact
    for pattern, price in table.items():
        if "*" in pattern and fnmatch.fnmatchcase(key, pattern.lower()):
            return price
    return table.get(provider)
