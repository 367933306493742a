"""Find a checkpoint: a local directory or a Hugging Face repo id (downloaded through the HF cache).

Reads what the engine needs from it: ``config.json``, safetensors weights (single or sharded),
``tokenizer.json``, and the sentence-transformers files (prompts, pooling) when present. No
torch here: the weights themselves load in :mod:`smysl.qwen3.loader`; a safetensors header and
a few rows of one tensor (:func:`read_rows`) are read with numpy.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from smysl.hfcache import hub_cache, offline_variable
from smysl.registry import ALIASES

#: ``max_position_embeddings`` where a ``config.json`` leaves it out (Qwen3's own default).
DEFAULT_POSITIONS = 32768

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
    def positions(self) -> int:
        """Most tokens the model's position table takes."""
        return int(self.config.get("max_position_embeddings", DEFAULT_POSITIONS))

    def check_max_tokens(self, max_tokens: int | None) -> None:
        """ValueError for a ``max_tokens`` option past :attr:`positions`, before an engine
        starts (it was lowered to the positions without a word, where ``st:`` refuses it)."""
        if max_tokens is not None and max_tokens > self.positions:
            raise ValueError(f"max_tokens {max_tokens}: {self.name} takes at most "
                             f"{self.positions} tokens (its position table)")

    @functools.cached_property
    def file_size(self) -> int:
        """Bytes of the weight files (a GGUF file whole), read once."""
        return sum(w.stat().st_size for w in self.weights if w.is_file())

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
    cannot be reached the cached copy is used. ``revision`` with a local path is a
    ``ValueError``: a path has no revisions, and a load must not claim one it did not get."""
    path = Path(model).expanduser()
    if path.is_dir() or path.is_file():
        if revision:  # a revision names a Hub commit: ignoring it would load something else
            raise ValueError(
                f"revision {revision!r} applies to Hugging Face repo ids, not the local "
                f"{'directory' if path.is_dir() else 'file'} {path}: drop --revision, or pass "
                "the repo id")
        return path
    repo = hub_repo(model)
    if path.exists() or repo is None or path.suffix.lower() == ".gguf":
        raise ModelNotFoundError(_not_a_model(model, path))
    return download(repo, revision=revision, cache_dir=cache_dir, offline=offline)


def _not_a_model(model: str, path: Path) -> str:
    """What a model string that names nothing loadable is not, and what it may be meant as."""
    from smysl.registry import SCHEMES

    head, sep, _ = model.partition(":")
    if sep and head.lower() in {a.partition(":")[0] for a in ALIASES}:
        return f"{model!r}: no such alias (aliases: {', '.join(ALIASES)})"
    if sep and head in SCHEMES:  # a scheme the caller does not take (a reranker's load)
        return (f"{model!r}: {head}: models do not load here; this takes a checkpoint "
                "directory, GGUF file or Hugging Face repo id")
    if sep and head.lower() in ("http", "https"):  # a server's address, without its API
        return (f"{model!r}: a server's address names no API: write smysl:{model} (smysl "
                f"serve), openai:{model.rstrip('/')}/v1#MODEL (any OpenAI-compatible server), "
                f"tei:{model} or ollama:{model}#MODEL")
    if sep and "/" not in head:  # scheme:model, a scheme unknown
        return (f"{model!r}: no scheme {head!r} (smysl knows {', '.join(sorted(SCHEMES))}), "
                "and it is not a model directory, GGUF file nor Hugging Face repo id")
    if path.suffix.lower() == ".gguf" or (path.parent != Path(".") and path.parent.is_dir()):
        return f"{model!r}: no such file or directory"
    return f"{model!r} is not a model directory, GGUF file nor a Hugging Face repo id (org/name)"


def hub_repo(model: str) -> str | None:
    """The Hub repo id ``model`` names (:func:`repo_id`), or None where it can only be a
    path (``/x/y``, ``./x``, ``~/x``: a mistyped folder is no repo to look up) or is no id the
    Hub could hold (``hf:Qwen/x``, ``Qwen/Qwen3 Embedding``: asked for online, they failed as
    "check the network")."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo = repo_id(model)
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        return None
    try:
        validate_repo_id(repo)
    except HFValidationError:
        return None
    return repo


def download(repo: str, *, revision: str | None = None, cache_dir: str | None = None,
             offline: bool | None = None, fallback: bool = True) -> Path:
    """Snapshot the files the engine reads of Hub repo ``repo`` into the HF cache (tqdm bars
    unless ``HF_HUB_DISABLE_PROGRESS_BARS``); returns the snapshot directory.

    ``offline`` (default: :func:`offline_variable`) reads the cache only; ``fallback`` uses the
    cache when the Hub cannot be reached. Failures are a :class:`ModelNotFoundError` in smysl's
    words (the Hub library's exception stays chained)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    if offline is None:
        offline = offline_variable() is not None
    kwargs: dict[str, Any] = dict(repo_id=repo, revision=revision,
                                  cache_dir=str(hub_cache(cache_dir)), allow_patterns=_PATTERNS)
    if not offline and not fallback:
        _reach_hub(repo, revision, cache_dir)
    try:
        return Path(snapshot_download(local_files_only=offline, **kwargs))
    except Exception as first:  # network down, no such repo, or offline and not cached
        error: BaseException = first
        if not offline and fallback and not isinstance(first, IncompleteSnapshotError):
            try:  # fall back on whatever the cache already holds
                return Path(snapshot_download(local_files_only=True, **kwargs))
            except IncompleteSnapshotError as cached:  # the cause to report: it can be fixed
                error = cached
            except Exception:
                pass
        if isinstance(error, IncompleteSnapshotError):
            raise ModelNotFoundError(_incomplete(repo, Path(error.snapshot_path), offline,
                                                 first)) from first
        raise ModelNotFoundError(_hub_failure(repo, revision, cache_dir, offline, first)) \
            from first


def _reach_hub(repo: str, revision: str | None, cache_dir: str | None) -> None:
    """ModelNotFoundError unless the Hub answers for ``repo``: huggingface_hub (2.x) returns
    a cached snapshot when the Hub cannot be reached, so a pull said it had pulled. A repo of
    GGUF files alone is refused too: none of them is pulled, and the pull said it had pulled."""
    from huggingface_hub import HfApi, constants, errors

    try:
        info = HfApi().model_info(repo, revision=revision or "main")  # as snapshot_download asks
    except (errors.RepositoryNotFoundError, errors.GatedRepoError,
            errors.RevisionNotFoundError) as e:
        raise ModelNotFoundError(_hub_failure(repo, revision, cache_dir, False, e)) from e
    except Exception as e:  # the network, a proxy, the Hub down
        cached = cached_revisions(hub_cache(cache_dir), repo)
        damage = _cached_damage(repo, revision, cache_dir) if cached else None
        kept = (f"; the cached copy ({', '.join(map(repr, cached))}) cannot load ({damage}): "
                "pull it again with network access" if damage else
                f"; the cached copy ({', '.join(map(repr, cached))}) is left as it is and "
                "loads as before" if cached else
                f"; it is not in the Hugging Face cache ({hub_cache(cache_dir)}) either")
        raise ModelNotFoundError(
            f"could not reach the Hugging Face Hub to pull {repo!r} ({constants.ENDPOINT}: "
            f"{_root_cause(e)}){kept}; check the network (HF_ENDPOINT, HTTPS_PROXY)") from e
    files = [s.rfilename for s in info.siblings or []]
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    if ggufs and "config.json" not in files:  # nothing of it matches the files pulled
        raise ModelNotFoundError(
            f"{repo!r} holds GGUF files ({', '.join(ggufs[:4])}{' ...' if len(ggufs) > 4 else ''})"
            f", not a transformers checkpoint: download the one you want (`hf download {repo} "
            f"{ggufs[0]}`) and pass its path as the model")


def _cached_damage(repo: str, revision: str | None, cache_dir: str | None) -> str | None:
    """What stops the cached snapshot of ``repo`` at ``revision`` loading (a cut download),
    None when it loads or is not cached at that revision. Headers only: no weight is read."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id=repo, revision=revision,
                                      cache_dir=str(hub_cache(cache_dir)),
                                      allow_patterns=_PATTERNS, local_files_only=True))
    except Exception as e:  # not at this revision (nothing to say), or files missing
        from huggingface_hub.errors import IncompleteSnapshotError

        return "files missing" if isinstance(e, IncompleteSnapshotError) else None
    try:
        read_checkpoint(path, repo)
    except ValueError as e:
        return str(e)
    return None


def _hub_failure(repo: str, revision: str | None, cache_dir: str | None, offline: bool,
                 error: BaseException) -> str:
    """Why ``repo`` could not be had, for people: no library internals, what to do next."""
    from huggingface_hub import errors

    where = f"the Hugging Face cache ({hub_cache(cache_dir)})"
    rev = f" at revision {revision!r}" if revision else ""
    # cached at other revisions only (a pinned tag, no `main`): say which to ask for
    others = cached_revisions(hub_cache(cache_dir), repo)
    elsewhere = (f" (it is cached at revision {', '.join(map(repr, others))}: pass "
                 f"--revision / revision=)" if others else "")
    if offline:
        name = offline_variable()
        return (f"model {repo!r}{rev} is not in {where}{elsewhere} and {_offline_why()}: "
                f"download it once with network access (`smysl pull {repo}`"
                + (f" with {name} unset" if name else "") + ") or pass a checkpoint directory")
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
            f"({constants.ENDPOINT}: {_root_cause(error)}) and it is not in {where}{elsewhere}; "
            "check the network (HF_ENDPOINT, HTTPS_PROXY), or pass a model this machine has: "
            "a checkpoint directory, a .gguf file, ollama-store:NAME (`smysl models` lists "
            "them)")


def _offline_why() -> str:
    """Why no download was tried: the variable that turned offline mode on, or the caller's
    choice (``smysl show`` reads the cache only; it named HF_HUB_OFFLINE, which was unset)."""
    name = offline_variable()
    return f"offline mode is on ({name})" if name else "only the cache was looked in"


def _incomplete(repo: str, snapshot: Path, offline: bool, error: BaseException) -> str:
    """A cached snapshot that the Hub library knows lacks files (an interrupted download)."""
    missing = missing_files(snapshot, weight_files(snapshot))
    why = (_offline_why() if offline
           else f"the Hugging Face Hub cannot be reached ({_root_cause(error)})")
    return (f"the cached copy of model {repo!r} in {snapshot} is incomplete"
            f"{': ' + ', '.join(missing) if missing else ''} (an interrupted download) and "
            f"{why}: run `smysl pull {repo}` with network access to complete it")


def cached_revisions(cache: Path, repo: str) -> list[str]:
    """The refs (branches, tags) under which ``repo`` is in the HF cache ``cache``, else the
    commits of its snapshots; empty when it is not cached. A ref whose commit has no snapshot
    (a newer ``main`` whose download was cut short) is not one."""
    base = cache / ("models--" + repo.replace("/", "--"))
    snaps = sorted(p.name for p in (base / "snapshots").iterdir()
                   if p.is_dir()) if (base / "snapshots").is_dir() else []
    refs = sorted(str(p.relative_to(base / "refs")) for p in (base / "refs").rglob("*")
                  if p.is_file() and p.read_text(encoding="utf-8", errors="replace").strip()
                  in snaps) if (base / "refs").is_dir() else []
    return refs or snaps


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


def read_config(root: Path) -> dict[str, Any]:
    """The ``config.json`` of checkpoint directory ``root`` ({} when absent); ValueError naming
    the file when it is no JSON (an empty or cut copy)."""
    return _json(root / "config.json")


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except ValueError as e:  # an empty or cut copy: json's message names no file
        raise ValueError(f"{path}: not valid JSON ({e}); copy or download it again") from None
    return data if isinstance(data, dict) else {}


def read_checkpoint(root: Path, name: str | None = None) -> Checkpoint:
    """Parse a checkpoint directory or GGUF file; raises ``ValueError`` for anything missing or
    unsupported."""
    if root.is_file():
        from smysl.qwen3 import gguf

        if not gguf.is_gguf(root):
            raise ValueError(f"{root} is neither a checkpoint directory nor a GGUF file")
        return gguf.read_checkpoint(root, name)
    weights = weight_files(root)
    if missing := missing_files(root, weights):
        if (why := gguf_folder_problem(root)) is not None:
            raise ValueError(why)
        raise ValueError(f"{root}: missing or incomplete files: {', '.join(missing)}"
                         f"{_redo(root)}")
    config = _json(root / "config.json")
    if not config:
        raise ValueError(f"{root}: config.json is empty")
    if config.get("model_type") not in (None, "qwen3"):  # before its tokenizer or head is read
        raise ValueError(f"{root}: not a Qwen3 checkpoint (model_type "
                         f"{config.get('model_type')!r}); another sentence-transformers model "
                         f"loads as st:{root}")
    tok = root / "tokenizer.json"
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


#: A shard's name as transformers writes it: ``model-00002-of-00004.safetensors``.
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.safetensors$")


def weight_files(root: Path) -> tuple[Path, ...]:
    """The safetensors files that make the weights of checkpoint directory ``root``, present
    or not: the shards its ``model.safetensors.index.json`` names, else every
    ``*.safetensors`` plus the siblings a shard's name promises (``-00002-of-00004``: four),
    so that a download that lost both the index and a shard is not read as a smaller model."""
    index = _json(root / "model.safetensors.index.json")
    if index:
        return tuple(root / s for s in sorted(set(index.get("weight_map", {}).values())))
    found = set(root.glob("*.safetensors"))
    for f in list(found):
        if m := _SHARD.match(f.name):
            count = int(m["count"])
            found |= {root / f"{m['stem']}-{i:05d}-of-{count:05d}.safetensors"
                      for i in range(1, count + 1)}
    return tuple(sorted(found))


def missing_weights(weights: Sequence[Path]) -> list[str]:
    """``weights`` that are absent, unreadable or shorter than their own header says (an
    interrupted download or copy), each as ``name (why)``; empty when all are whole. Reads
    the headers only."""
    out = []
    for w in weights:
        if not w.is_file():
            out.append(f"{w.name} (missing)")
            continue
        try:
            with w.open("rb") as f:
                header, base = safetensors_header(f, w)
            end = base + max((int(t["data_offsets"][1]) for t in header.values()), default=0)
        except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as e:
            out.append(f"{w.name} (unreadable: {e})")
            continue
        if (size := w.stat().st_size) < end:
            out.append(f"{w.name} (truncated: {size} of {end} bytes)")
    return out


def missing_files(root: Path, weights: Sequence[Path]) -> list[str]:
    """The files the engine reads of checkpoint directory ``root`` (its :func:`weight_files`
    ``weights``) that are absent or cut short (config, every weight file, tokenizer), each as
    ``name (why)``; empty when whole."""
    out = [] if (root / "config.json").is_file() else ["config.json (missing)"]
    pickled = sorted(p.name for p in root.glob("*.bin")) if not weights else []
    out += (missing_weights(weights) if weights else
            [f"*.safetensors (none; {', '.join(pickled)} is PyTorch's pickle format, not read "
             "here: convert it, e.g. save_pretrained(dir, safe_serialization=True))"]
            if pickled else ["*.safetensors (none)"])
    if not (root / "tokenizer.json").is_file():
        out.append("tokenizer.json (missing)")
    elif not looks_whole_json(root / "tokenizer.json"):
        out.append("tokenizer.json (empty or cut short)")
    return out


def looks_whole_json(path: Path) -> bool:
    """Whether the file ``path`` begins with ``{`` and ends with ``}`` (whitespace aside): an
    empty or cut-short copy does not, found without parsing megabytes (a tokenizer.json is
    ~11 MB). It failed later as the tokenizers library's ``Exception: EOF while parsing``,
    naming no file."""
    try:
        with path.open("rb") as f:
            head = f.read(64).lstrip()
            f.seek(max(0, path.stat().st_size - 64))
            tail = f.read().rstrip()
    except OSError:
        return False
    return head.startswith(b"{") and tail.endswith(b"}")


def gguf_folder(root: Path) -> list[Path]:
    """The GGUF files of directory ``root``, sorted by name, where it holds them in place of a
    checkpoint (no ``config.json``: a Hub ``*-GGUF`` repo, a download folder); else none."""
    if (root / "config.json").is_file():
        return []
    return sorted(p for p in root.glob("*") if p.suffix.lower() == ".gguf" and p.is_file())


def gguf_folder_problem(root: Path) -> str | None:
    """Why a directory of GGUF files (:func:`gguf_folder`) does not load as a checkpoint: each
    file is a model of its own, passed by its path; None for any other directory."""
    held = gguf_folder(root)
    if not held:
        return None
    names = ", ".join(p.name for p in held[:4]) + (f" and {len(held) - 4} more"
                                                    if len(held) > 4 else "")
    # a part of a split file (tiny-00001-of-00003.gguf) loads only merged: not the example
    whole = [p for p in held if not _SPLIT_PART.search(p.name)]
    what = (f"pass one of the files as the model, e.g. {whole[0]}" if whole else
            f"its files are parts of a split model: merge them (llama-gguf-split --merge "
            f"{held[0]} OUT.gguf) and pass OUT.gguf as the model")
    return (f"{root} holds GGUF files ({names}), not a transformers checkpoint "
            f"(config.json, *.safetensors): {what}")


#: The name llama.cpp gives each part of a file split in several (``gguf-split``).
_SPLIT_PART = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


def looks_like_reranker(root: Path, name: str) -> bool:
    """Whether the checkpoint directory ``root`` is a Qwen3-Reranker: a Qwen3 named so
    (``rerank`` in the last part of ``name``, of ``root``'s or of its Hugging Face repo id)
    without the sentence-transformers files (``modules.json``) an embedding model ships. Its
    hidden states load as an embedding model's would, and their vectors mean nothing."""
    names = (Path(name).name, root.name, (hub_snapshot_repo(root) or "").rpartition("/")[2])
    try:
        config = _json(root / "config.json")
    except ValueError:  # a damaged config is the loader's to name, not a listing's to fail on
        return False
    return (config.get("model_type") == "qwen3"
            and any("rerank" in n.lower() for n in names)
            and not (root / "modules.json").is_file())


def hub_snapshot_repo(root: Path) -> str | None:
    """The repo id of a Hugging Face cache snapshot directory
    (``models--Org--Name/snapshots/<commit>``), None for any other directory."""
    repo = root.parent.parent.name
    if root.parent.name != "snapshots" or not repo.startswith("models--"):
        return None
    return repo.removeprefix("models--").replace("--", "/", 1)


def _redo(root: Path) -> str:
    """What to do about a checkpoint with missing files: where they come from."""
    repo = hub_snapshot_repo(root)
    if repo is not None:
        return (f" (an interrupted download? `smysl pull {repo}` with network access "
                "completes it)")
    return " (copy or convert the checkpoint again)"


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
