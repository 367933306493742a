"""Fixtures for provider tests: the real Qwen3 tokenizer and a provider environment that can
never reach a real API (every key is fake and every base URL is given explicitly)."""

from __future__ import annotations

from pathlib import Path

import pytest

TOKENIZER_JSON = Path(__file__).resolve().parents[2].parent / "shared" / "qwen3-tokenizer" / \
    "tokenizer.json"

_KEYS = ("OPENROUTER_API_KEY", "DASHSCOPE_API_KEY", "DEEPINFRA_API_KEY", "DEEPINFRA_TOKEN",
         "FIREWORKS_API_KEY", "SILICONFLOW_API_KEY", "OPENAI_API_KEY", "SMYSL_API_KEY",
         "TEI_API_KEY", "REPLICATE_API_TOKEN")
_URLS = ("OPENROUTER_BASE_URL", "DASHSCOPE_BASE_URL", "DEEPINFRA_BASE_URL", "FIREWORKS_BASE_URL",
         "SILICONFLOW_BASE_URL", "OPENAI_BASE_URL", "OLLAMA_HOST", "TEI_URL", "SMYSL_URL",
         "REPLICATE_BASE_URL")


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    if not TOKENIZER_JSON.is_file():
        pytest.skip(f"Qwen3 tokenizer not found at {TOKENIZER_JSON}")
    return TOKENIZER_JSON


@pytest.fixture(scope="session")
def qwen_tok(tokenizer_path: Path):  # type: ignore[no-untyped-def]
    from smysl.tokenize import Tokenizer

    return Tokenizer(tokenizer_path, max_tokens=1 << 30)


@pytest.fixture(autouse=True)
def provider_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake keys, no inherited base URLs, an empty offline Hugging Face cache."""
    for k in _URLS:
        monkeypatch.delenv(k, raising=False)
    for k in _KEYS:
        monkeypatch.setenv(k, "sk-test")
    monkeypatch.delenv("SMYSL_TOKENIZER", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
