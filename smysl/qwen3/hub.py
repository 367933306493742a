"""Find a checkpoint: a local directory or a Hugging Face repo id (downloaded through the HF cache).

Reads what the engine needs from it: ``config.json``, safetensors weights (single or sharded),
``tokenizer.json``, and the sentence-transformers files (prompts, pooling) when present.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smysl.registry import ALIASES

_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "1_Pooling/config.json",
]


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a local directory, nor cached, nor downloadable."""


@dataclass(frozen=True)
class Checkpoint:
    """Parsed files of one checkpoint directory."""

    root: Path
    name: str
    config: dict[str, Any]
    weights: tuple[Path, ...]
    tokenizer_file: Path
    st_config: dict[str, Any] = field(default_factory=dict)
    pooling: dict[str, Any] = field(default_factory=dict)


def resolve(model: str, *, revision: str | None = None, cache_dir: str | None = None,
            offline: bool | None = None) -> Path:
    """Return a local directory for ``model`` (a path, an alias, or a Hub repo id)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    repo = ALIASES.get(model.lower(), model)
    if path.exists() or repo.count("/") != 1 or repo.startswith((".", "/")):
        raise ModelNotFoundError(f"{model!r} is not a model directory nor a Hugging Face repo id")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ModelNotFoundError("huggingface_hub is required to download models") from e
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    kwargs: dict[str, Any] = dict(repo_id=repo, revision=revision, cache_dir=cache_dir,
                                  allow_patterns=_PATTERNS)
    try:
        return Path(snapshot_download(local_files_only=offline, **kwargs))
    except Exception as first:  # network down, or offline and not cached
        if not offline:
            try:  # fall back on whatever the cache already holds
                return Path(snapshot_download(local_files_only=True, **kwargs))
            except Exception:
                pass
        raise ModelNotFoundError(
            f"model {repo!r} is not a local directory, is not in the Hugging Face cache"
            f"{' (offline mode)' if offline else ''}, and could not be downloaded: {first}. "
            "Download it once with network access (or copy the directory) and pass its path."
        ) from first


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def read_checkpoint(root: Path, name: str | None = None) -> Checkpoint:
    """Parse a checkpoint directory; raises ``ValueError`` for anything missing or unsupported."""
    config = _json(root / "config.json")
    if not config:
        raise ValueError(f"{root} has no config.json")
    index = _json(root / "model.safetensors.index.json")
    if index:
        shards = sorted(set(index.get("weight_map", {}).values()))
        weights = tuple(root / s for s in shards)
    else:
        weights = tuple(sorted(root.glob("*.safetensors")))
    missing = [str(w) for w in weights if not w.is_file()]
    if not weights or missing:
        raise ValueError(f"{root}: safetensors weights missing {missing or '(none found)'}")
    tok = root / "tokenizer.json"
    if not tok.is_file():
        raise ValueError(f"{root} has no tokenizer.json")
    pooling = _json(root / "1_Pooling" / "config.json")
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    if pooling and modes != ["pooling_mode_lasttoken"]:
        raise ValueError(f"{root}: pooling {modes} is not last-token pooling (Qwen3-Embedding)")
    return Checkpoint(
        root=root,
        name=name or root.name,
        config=config,
        weights=weights,
        tokenizer_file=tok,
        st_config=_json(root / "config_sentence_transformers.json"),
        pooling=pooling,
    )
