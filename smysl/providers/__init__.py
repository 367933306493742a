"""Remote embedding providers behind the :class:`~smysl.base.BaseEmbedder` contract.

Model strings (see ``docs/providers.md``)::

    openrouter:qwen/qwen3-embedding-8b
    dashscope:text-embedding-v4
    deepinfra:Qwen/Qwen3-Embedding-8B
    fireworks:fireworks/qwen3-embedding-8b
    siliconflow:Qwen/Qwen3-Embedding-8B
    openai:http://localhost:8001/v1#Qwen/Qwen3-Embedding-0.6B   (any OpenAI-compatible URL)
    ollama:qwen3-embedding:0.6b
    tei:http://localhost:8080
    smysl:http://localhost:8000#qwen3-embedding:0.6b
    replicate:lucataco/qwen3-embedding-8b

Every scheme takes ``URL#model`` to override its base URL, and keyword options
(``smysl.load("openrouter:...", api_key=..., timeout=..., max_retries=...)``): any
:class:`ProviderConfig` field plus ``api_key``, ``base_url``, ``dimensions``, ``tokenizer``,
``name``, ``default_task``.
"""

from __future__ import annotations

from smysl.providers.base import Provider
from smysl.providers.config import ProviderConfig
from smysl.providers.errors import (
    IncompleteEmbeddingError,
    InvalidRowError,
    JobTimeoutError,
    MalformedResponseError,
    PartialEmbeddingError,
    PayloadTooLargeError,
    ProviderError,
    ProviderHTTPError,
    ProviderTimeoutError,
    RejectedInputError,
    RequestTimeoutError,
    RetriesExhaustedError,
)
from smysl.providers.presets import (
    PRESETS,
    connect,
    load_dashscope,
    load_deepinfra,
    load_fireworks,
    load_ollama,
    load_openai,
    load_openrouter,
    load_replicate,
    load_siliconflow,
    load_smysl,
    load_tei,
)
from smysl.providers.pricing import PRICES, REQUEST_PRICES, price_for, request_price_for
from smysl.providers.tokens import find_tokenizer
from smysl.providers.usage import Usage

__all__ = [
    "PRESETS",
    "PRICES",
    "REQUEST_PRICES",
    "IncompleteEmbeddingError",
    "InvalidRowError",
    "JobTimeoutError",
    "MalformedResponseError",
    "PartialEmbeddingError",
    "PayloadTooLargeError",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderTimeoutError",
    "RejectedInputError",
    "RequestTimeoutError",
    "RetriesExhaustedError",
    "Usage",
    "connect",
    "find_tokenizer",
    "load_dashscope",
    "load_deepinfra",
    "load_fireworks",
    "load_ollama",
    "load_openai",
    "load_openrouter",
    "load_replicate",
    "load_siliconflow",
    "load_smysl",
    "load_tei",
    "price_for",
    "request_price_for",
]
