"""The schemes providers are reached by: one :class:`ProviderConfig` preset per scheme
(:data:`PRESETS`), :func:`connect` for ``scheme:rest`` strings, and the ``load_<scheme>``
factories that :mod:`smysl.registry` names."""

from __future__ import annotations

import dataclasses
from typing import Any

from smysl.options import ModelOptions
from smysl.providers.base import Provider
from smysl.providers.config import ProviderConfig, embedding_base_url, url_and_model
from smysl.shown import shown_url

#: The widths DashScope's text-embedding-v4 and SiliconFlow's Qwen3 models take as
#: ``dimensions`` (each up to its model's own width); anything else is a 400 there.
DIMENSION_STEPS = (64, 128, 256, 512, 768, 1024, 1536, 2048, 2560, 4096)

#: Default configuration per scheme. Limits are the providers' documented ones where found.
PRESETS: dict[str, ProviderConfig] = {
    "openrouter": ProviderConfig(
        name="openrouter", base_url="https://openrouter.ai/api/v1",
        api_key_env="OPENROUTER_API_KEY", api_key_required=True, base_url_env="OPENROUTER_BASE_URL",
        max_batch_texts=256, max_tokens=32768, supports_dimensions=True,
        headers=(("X-Title", "smysl"),)),
    # Documented: at most 10 rows per request and 8,192 tokens per row (text-embedding-v3/v4),
    # and `dimensions` one of 64..2048 in steps (other values are a 400); text-embedding-v3
    # takes only 1024, 768 and 512 in Singapore (64..1024 in Beijing): 512 is asked for less.
    "dashscope": ProviderConfig(
        name="dashscope", base_url="https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        api_key_env="DASHSCOPE_API_KEY", api_key_required=True, base_url_env="DASHSCOPE_BASE_URL",
        max_batch_texts=10, max_tokens=8192, supports_dimensions=True,
        dimension_steps=DIMENSION_STEPS,
        model_widths=(("text-embedding-v4", 2048), ("text-embedding-v3", 1024)),
        model_min_steps=(("text-embedding-v3", 512),)),
    # docs.deepinfra.com/api-reference/openai-embeddings-1: "dimensions" (>= 32) is taken.
    "deepinfra": ProviderConfig(
        name="deepinfra", base_url="https://api.deepinfra.com/v1/openai",
        api_key_env="DEEPINFRA_API_KEY,DEEPINFRA_TOKEN", api_key_required=True,
        base_url_env="DEEPINFRA_BASE_URL", max_batch_texts=256, max_tokens=8192,
        supports_dimensions=True),
    "fireworks": ProviderConfig(
        name="fireworks", base_url="https://api.fireworks.ai/inference/v1",
        api_key_env="FIREWORKS_API_KEY", api_key_required=True, base_url_env="FIREWORKS_BASE_URL",
        max_batch_texts=256, supports_dimensions=True),
    # Documented: 32,768 tokens per input for Qwen3-Embedding; arrays of at most 32 inputs;
    # `dimensions` (Qwen3 models only) one of 64..4096 in steps, up to the model's width.
    "siliconflow": ProviderConfig(
        name="siliconflow", base_url="https://api.siliconflow.com/v1",
        api_key_env="SILICONFLOW_API_KEY", api_key_required=True,
        base_url_env="SILICONFLOW_BASE_URL", max_batch_texts=32, max_tokens=32768,
        supports_dimensions=True, dimension_steps=DIMENSION_STEPS),
    # OpenAI's own limits: 2,048 inputs and 300,000 tokens per request. OpenAI and vLLM take
    # `dimensions` (vLLM for Matryoshka models: another refuses it with a clear 400).
    "openai": ProviderConfig(
        name="openai", base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY",
        base_url_env="OPENAI_BASE_URL", max_batch_texts=2048, max_batch_tokens=300_000,
        width_from_name=False, supports_dimensions=True),
    "ollama": ProviderConfig(
        name="ollama", base_url="http://localhost:11434", path="/api/embed",
        base_url_env="OLLAMA_HOST", max_batch_texts=64,
        width_from_name=False, supports_dimensions=True, refused_means_down=True,
        unreachable_hint="is Ollama running there (`ollama serve`)? On the machine that "
                         "holds its store, a model of it also runs in smysl's own engine, "
                         "without Ollama: ollama-store:NAME"),
    # TEI's default --max-client-batch-size is 32; larger batches get 413 (and are split).
    "tei": ProviderConfig(
        name="tei", base_url="http://localhost:8080", path="/embed", base_url_env="TEI_URL",
        api_key_env="TEI_API_KEY", max_batch_texts=32,
        width_from_name=False),
    # Replicate predictions (one batch per prediction); 32 texts per run as public code using
    # lucataco/qwen3-embedding-8b does. Billed per run: pricing.REQUEST_PRICES.
    "replicate": ProviderConfig(
        name="replicate", base_url="https://api.replicate.com/v1", path="/predictions",
        api_key_env="REPLICATE_API_TOKEN", api_key_required=True,
        base_url_env="REPLICATE_BASE_URL", max_batch_texts=32, supports_dimensions=True),
    # smysl serve: OpenAI-compatible /v1/embeddings; at most 2,048 inputs per request.
    "smysl": ProviderConfig(
        name="smysl", base_url="http://127.0.0.1:8000/v1", base_url_env="SMYSL_URL",
        # SMYSL_REMOTE_API_KEY first: SMYSL_API_KEY is also `smysl serve`'s own key
        api_key_env="SMYSL_REMOTE_API_KEY,SMYSL_API_KEY", max_batch_texts=2048,
        width_from_name=False, supports_dimensions=True),
}

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ProviderConfig)} - {"name"}
_PROVIDER_OPTIONS = {"api_key", "dimensions", "tokenizer", "name", "default_task", "transport",
                     "seed"}


def _provider_class(scheme: str) -> type[Provider]:
    if scheme == "ollama":
        from smysl.providers.ollama import OllamaProvider

        return OllamaProvider
    if scheme == "tei":
        from smysl.providers.tei import TEIProvider

        return TEIProvider
    if scheme == "smysl":
        from smysl.providers.openai import SmyslProvider

        return SmyslProvider
    if scheme == "replicate":
        from smysl.providers.replicate import ReplicateProvider

        return ReplicateProvider
    from smysl.providers.openai import OpenAIProvider

    return OpenAIProvider


def connect(scheme: str, rest: str = "", **options: Any) -> Provider:
    """Build the provider for ``scheme:rest`` (``rest`` = ``model`` or ``URL#model``)."""
    if scheme not in PRESETS:
        raise ValueError(f"unknown provider {scheme!r}; known: {', '.join(sorted(PRESETS))}")
    cls = _provider_class(scheme)
    unknown = set(options) - _CONFIG_FIELDS - _PROVIDER_OPTIONS - cls.OPTIONS - {"base_url"}
    if unknown:
        raise TypeError(f"unexpected options for {scheme}: {sorted(unknown)}")
    url, model = url_and_model(rest, url_alone=scheme == "tei")
    if options.get("base_url"):
        url = str(options.pop("base_url"))
    options.pop("base_url", None)
    overrides = {k: options.pop(k) for k in list(options) if k in _CONFIG_FIELDS}
    config = PRESETS[scheme]
    secure = config.base_url.startswith("https://")
    if url:
        # An explicit URL wins over the environment variable.
        overrides.update(base_url=embedding_base_url(scheme, url, secure=secure),
                         base_url_env=None)
    elif env := config.env_base_url():
        overrides.update(base_url=embedding_base_url(scheme, env, secure=secure,
                                                     what=f"${config.base_url_env}"),
                         base_url_env=None)
    config = dataclasses.replace(config, **overrides)
    if not model and scheme not in ("tei",):
        served = _served_names(config, options.get("api_key")) if scheme == "smysl" else []
        raise ValueError(f"{scheme}: no model given (write {scheme}:MODEL or {scheme}:URL#MODEL)"
                         + (f"; {shown_url(config.base_url)} serves "
                            f"{', '.join(map(repr, served))}" if served else ""))
    if scheme in ("openrouter", "dashscope", "deepinfra", "fireworks", "siliconflow") and \
            "dimensions" not in options:
        options["dimensions"] = config.width_of(model)
    # TEI serves one model and takes no name: the server's URL identifies it (shown without
    # its user part: the name reaches /v1/models, logs and index metadata)
    return cls(model or shown_url(config.base_url), config, **options)


def _served_names(config: ProviderConfig, api_key: str | None) -> list[str]:
    """The model names a ``smysl serve`` at ``config.base_url`` lists (``/v1/models``), for
    the error of a model string that names none; [] when it does not answer them. The name
    stays required: it is what a store records, and a server may serve another model later."""
    import httpx

    try:
        key = config.api_key(api_key)
        r = httpx.get(f"{config.base_url}/models", timeout=3.0,
                      headers={"Authorization": f"Bearer {key}"} if key else None)
        # a reranker is listed too, its dimensions null
        return ([m["id"] for m in r.json()["data"] if m.get("dimensions")]
                if r.status_code == 200 else [])
    except Exception:  # unreachable, not smysl, or no answer of that shape: the plain error
        return []


#: ModelOptions fields -> ProviderConfig fields (the registry rejects any other option set).
_FROM_MODEL_OPTIONS = {"max_tokens": "max_tokens", "max_batch_tokens": "max_batch_tokens",
                       "max_batch_size": "max_batch_texts"}


def config_options(options: ModelOptions | None) -> dict[str, Any]:
    """The :class:`ProviderConfig` fields that set :class:`ModelOptions` fields stand for."""
    given = (options or ModelOptions()).given()
    return {_FROM_MODEL_OPTIONS[k]: v for k, v in given.items() if k in _FROM_MODEL_OPTIONS}


def _factory(scheme: str) -> Any:
    def load(rest: str, options: ModelOptions | None = None, **kwargs: Any) -> Provider:
        return connect(scheme, rest, **config_options(options), **kwargs)

    load.__name__ = f"load_{scheme}"
    load.__doc__ = f"``{scheme}:...`` model strings (see :func:`connect`)."
    return load


load_openrouter = _factory("openrouter")
load_dashscope = _factory("dashscope")
load_deepinfra = _factory("deepinfra")
load_fireworks = _factory("fireworks")
load_siliconflow = _factory("siliconflow")
load_openai = _factory("openai")
load_ollama = _factory("ollama")
load_tei = _factory("tei")
load_smysl = _factory("smysl")
load_replicate = _factory("replicate")
