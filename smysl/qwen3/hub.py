"""Find a checkpoint: a local directory or a Hugging Face repo id (downloaded through the HF cache).

Reads what the engine needs from it: ``config.json``, safetensors weights (single or sharded),
``tokenizer.json``, and the sentence-transformers files (prompts, pooling) when present. No
torch here: the weights themselves load in :mod:`smysl.qwen3.loader`; a safetensors header and
a few rows of one tensor (:func:`read_rows`) are read with numpy.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

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
    #: ``safetensors`` (a directory) or ``gguf`` (``root`` is the file; its tokenizer is in
    #: it unless ``tokenizer_file`` names a ``tokenizer.json`` beside it).
    format: str = "safetensors"
    #: A GGUF file's weight type as llama.cpp names it (``Q8_0``, ``F16``); None otherwise.
    weight_type: str | None = None

    @property
    def files(self) -> list[Path]:
        """The files that make this model (what :meth:`Embedder.fingerprint` hashes)."""
        if self.format == "gguf":
            return sorted({*self.weights, self.tokenizer_file})
        extra = [self.root / "config_sentence_transformers.json",
                 self.root / "1_Pooling" / "config.json"]
        return [self.root / "config.json", self.tokenizer_file, *self.weights,
                *(f for f in extra if f.is_file())]


def repo_id(model: str) -> str:
    """The Hub repo id ``model`` names: an alias's target, else ``model`` itself."""
    return ALIASES.get(model.lower(), model)


def resolve(model: str, *, revision: str | None = None, cache_dir: str | None = None,
            offline: bool | None = None) -> Path:
    """Return a local directory for ``model`` (a path, an alias, or a Hub repo id), or the
    file itself for a path to a file (a GGUF).

    A Hub model comes from the cache, downloaded first when missing or outdated; when the Hub
    cannot be reached the cached copy is used."""
    path = Path(model).expanduser()
    if path.is_dir() or path.is_file():
        return path
    repo = repo_id(model)
    if path.exists() or repo.count("/") != 1 or repo.startswith((".", "/")):
        raise ModelNotFoundError(f"{model!r} is not a model directory nor a Hugging Face repo id")
    return download(repo, revision=revision, cache_dir=cache_dir, offline=offline)


def download(repo: str, *, revision: str | None = None, cache_dir: str | None = None,
             offline: bool | None = None, fallback: bool = True) -> Path:
    """Snapshot the files the engine reads of Hub repo ``repo`` into the HF cache (tqdm bars
    unless ``HF_HUB_DISABLE_PROGRESS_BARS``); returns the snapshot directory.

    ``offline`` (default: ``HF_HUB_OFFLINE``) reads the cache only; ``fallback`` uses the cache
    when the Hub cannot be reached. Failures are a :class:`ModelNotFoundError` in smysl's words
    (the Hub library's exception stays chained)."""
    from huggingface_hub import snapshot_download

    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    kwargs: dict[str, Any] = dict(repo_id=repo, revision=revision,
                                  cache_dir=str(hub_cache(cache_dir)), allow_patterns=_PATTERNS)
    try:
        return Path(snapshot_download(local_files_only=offline, **kwargs))
    except Exception as first:  # network down, no such repo, or offline and not cached
        if not offline and fallback:
            try:  # fall back on whatever the cache already holds
                return Path(snapshot_download(local_files_only=True, **kwargs))
            except Exception:
                pass
        raise ModelNotFoundError(_hub_failure(repo, revision, cache_dir, offline, first)) \
            from first


def hub_cache(cache_dir: str | None = None) -> Path:
    """The Hugging Face cache directory in use (``HF_HUB_CACHE``, ``HF_HOME``/hub, ...), read
    from the environment at call time."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE).expanduser()


def _hub_failure(repo: str, revision: str | None, cache_dir: str | None, offline: bool,
                 error: BaseException) -> str:
    """Why ``repo`` could not be had, for people: no library internals, what to do next."""
    from huggingface_hub import errors

    where = f"the Hugging Face cache ({hub_cache(cache_dir)})"
    rev = f" at revision {revision!r}" if revision else ""
    if offline:
        return (f"model {repo!r}{rev} is not in {where} and offline mode is on "
                "(HF_HUB_OFFLINE): download it once with network access (`smysl pull "
                f"{repo}`) or pass a checkpoint directory")
    if isinstance(error, errors.GatedRepoError):
        return (f"model {repo!r} is gated on the Hugging Face Hub: accept its terms on "
                f"https://huggingface.co/{repo} and set HF_TOKEN (or `hf auth login`)")
    if isinstance(error, errors.RevisionNotFoundError):
        return f"model {repo!r} has no revision {revision!r} on the Hugging Face Hub"
    if isinstance(error, errors.RepositoryNotFoundError):
        return (f"no model {repo!r} on the Hugging Face Hub (or it is private: set HF_TOKEN); "
                "check the name (`smysl models` lists what is cached)")
    from huggingface_hub import constants

    return (f"could not download model {repo!r}{rev} from the Hugging Face Hub "
            f"({constants.ENDPOINT}: {_root_cause(error)}) and it is not in {where}; check the "
            "network (HF_ENDPOINT, HTTPS_PROXY) or pass a checkpoint directory")


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost exception (``ConnectError: [Errno -2] Name or service
    not known``); the Hub library's own wrapper text is not shown."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if first.startswith("Got: "):  # LocalEntryNotFoundError("Got: ConnectError: ...\n...")
        return first[5:]
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def read_checkpoint(root: Path, name: str | None = None) -> Checkpoint:
    """Parse a checkpoint directory or GGUF file; raises ``ValueError`` for anything missing or
    unsupported."""
    if root.is_file():
        from smysl.qwen3 import gguf

        if not gguf.is_gguf(root):
            raise ValueError(f"{root} is neither a checkpoint directory nor a GGUF file")
        return gguf.read_checkpoint(root, name)
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


def safetensors_header(f: BinaryIO, path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where data starts."""
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > 100 * 2**20:
        raise ValueError(f"{path}: not a safetensors file (header of {header_len} bytes)")
    header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    return header, 8 + header_len


#: Float dtypes of safetensors files (little-endian) -> the numpy dtype read as (bf16: its bits).
_ROW_DTYPES: dict[str, np.dtype[Any]] = {
    "BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8")}


def read_rows(ckpt: Checkpoint, names: Sequence[str], rows: Sequence[int]) -> np.ndarray | None:
    """Rows ``rows`` of the first of the 2-D float tensors ``names`` that the checkpoint holds,
    as float32 ``[len(rows), columns]`` (exact: bf16 and f16 widen without rounding), read by
    seeking: the rest of the tensor is never loaded (a reranker's two head rows of 151,669).
    None when it holds none of them."""
    for path in ckpt.weights:
        with path.open("rb") as f:
            header, base = safetensors_header(f, path)
            name = next((n for n in names if n in header), None)
            if name is None:
                continue
            info = header[name]
            if info["dtype"] not in _ROW_DTYPES or len(info["shape"]) != 2:
                raise ValueError(f"{path}: {name} is not a 2-D float tensor")
            count, columns = info["shape"]
            dtype = _ROW_DTYPES[info["dtype"]]
            row_bytes = columns * dtype.itemsize
            out = np.empty((len(rows), columns), np.float32)
            for i, r in enumerate(rows):
                if not 0 <= r < count:
                    raise ValueError(f"{path}: row {r} outside {name} ({count} rows)")
                f.seek(base + info["data_offsets"][0] + r * row_bytes)
                buf = f.read(row_bytes)
                if len(buf) != row_bytes:
                    raise ValueError(f"{path}: truncated file (tensor {name})")
                values = np.frombuffer(buf, dtype)
                # bf16 is the top half of a float32
                out[i] = ((values.astype(np.uint32) << 16).view(np.float32)
                          if info["dtype"] == "BF16" else values)
            return out
    return None
