"""The public local embedder: text -> prompts/tokens -> token-budget batches -> engine -> vectors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder, Progress, load_scheme, split_scheme
from smysl.engine import BATCH_TOKENS, Engine, EngineConfig, EngineLike
from smysl.hub import read_checkpoint, resolve
from smysl.pooling import check_dimensions, truncate_dimensions
from smysl.prompts import DEFAULT_TASK
from smysl.scheduler import SchedulerConfig, plan_batches
from smysl.tokenize import Direction, InputTooLongError, Tokenizer

_QUERY_PROMPT = re.compile(r"^Instruct: (?P<task>.*)\nQuery:$", re.S)


class Embedder(BaseEmbedder):
    """Qwen3-Embedding on the native engine (CPU or CUDA).

    Build it with :meth:`load`; ``embed``/``embed_queries``/``embed_documents`` come from
    :class:`~smysl.base.BaseEmbedder`.
    """

    def __init__(self, engine: EngineLike, tokenizer: Tokenizer, *, name: str,
                 scheduler: SchedulerConfig | None = None, default_task: str = DEFAULT_TASK,
                 max_tokens: int | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = name
        self.dimensions = engine.hidden_size
        self.default_task = default_task
        self.limit = min(max_tokens or engine.max_positions, engine.max_positions)
        self.max_tokens = tokenizer.max_tokens = self.limit
        if scheduler is None:
            budget = BATCH_TOKENS.get(engine.device.type, 4096)
            scheduler = SchedulerConfig(max_batch_tokens=budget)
        self.scheduler = scheduler

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        quantize: str | None = None,
        revision: str | None = None,
        max_batch_tokens: int | None = None,
        max_batch_size: int = 512,
        max_tokens: int | None = None,
        threads: int | None = None,
        process: bool = False,
        **options: Any,
    ) -> BaseEmbedder:
        """Load ``model``: a checkpoint directory, a Hub repo id (``Qwen/Qwen3-Embedding-0.6B``),
        an alias (``qwen3-embedding:0.6b``), or ``scheme:rest`` for other backends
        (``st:...`` sentence-transformers, provider schemes such as ``openrouter:...``).

        ``process=True`` runs the engine in a child process (:mod:`smysl.worker`): same
        vectors, and a busy caller such as the HTTP server no longer competes with the forward
        passes for the GIL. ``close()`` stops it.
        """
        scheme, rest = split_scheme(model)
        if scheme is not None:
            # forward the engine options a caller set explicitly: the backend uses or rejects
            # them (TypeError), never silently drops them
            given = dict(device=device, dtype=dtype, quantize=quantize, revision=revision,
                         max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                         max_tokens=max_tokens, threads=threads, process=process or None)
            defaults = dict(device="auto", dtype="auto", max_batch_size=512)
            explicit = {k: v for k, v in given.items() if v is not None and v != defaults.get(k)}
            return load_scheme(scheme, rest, **explicit, **options)
        if options:
            raise TypeError(f"unexpected options for a local model: {sorted(options)}")
        ckpt = read_checkpoint(resolve(model, revision=revision), name=model)
        cfg = EngineConfig(device=device, dtype=dtype, quantize=quantize, threads=threads)
        engine: EngineLike
        if process:
            from smysl.worker import EngineProcess

            engine = EngineProcess(ckpt, cfg)
        else:
            engine = Engine.from_checkpoint(ckpt, cfg)
        tokenizer = Tokenizer(ckpt.tokenizer_file, engine.max_positions)
        sched = SchedulerConfig(
            max_batch_tokens=max_batch_tokens or BATCH_TOKENS.get(engine.device.type, 4096),
            max_batch_size=max_batch_size,
        )
        query_prompt = str(ckpt.st_config.get("prompts", {}).get("query", ""))
        m = _QUERY_PROMPT.match(query_prompt)
        return cls(engine, tokenizer, name=model, scheduler=sched, max_tokens=max_tokens,
                   default_task=m.group("task") if m else DEFAULT_TASK)

    # ------------------------------------------------------------------ BaseEmbedder
    @property
    def healthy(self) -> bool:
        """False once an engine process has exited."""
        return bool(getattr(self.engine, "alive", True))

    def close(self) -> None:
        """Stop the engine process, if the engine runs in one."""
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()

    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        return self._run(self.tokenizer.encode(texts, truncate=truncate), progress)

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Tokens each text costs as a document, EOS included."""
        return self.tokenizer.count(self._check_texts(texts))

    # ------------------------------------------------------------------ token-level API
    def tokenize(self, texts: Sequence[str], *, truncate: bool = False,
                 direction: Direction = "right") -> list[list[int]]:
        """Token ids exactly as they are embedded (EOS last)."""
        return self.tokenizer.encode(self._check_texts(texts), truncate=truncate,
                                     direction=direction)

    def prepare_token_ids(self, ids: Sequence[Sequence[int]], *,
                          truncate: bool = False) -> list[list[int]]:
        """Token ids exactly as they are embedded: every id in the vocabulary, EOS last once
        (appended when missing), over-long input cut on the right (``truncate``) or rejected
        with :class:`~smysl.tokenize.InputTooLongError`; other bad input is ``ValueError``."""
        seqs: list[list[int]] = []
        eos, rows = self.tokenizer.eos_id, self.engine.vocab_rows
        for i, seq in enumerate(ids):
            s = [int(t) for t in seq]
            if not s:
                raise ValueError(f"input {i} is an empty token list")
            bad = [t for t in s if not 0 <= t < rows]
            if bad:
                raise ValueError(f"input {i} has token ids outside 0..{rows - 1}: {bad[:5]}")
            if s[-1] != eos:
                s.append(eos)
            if len(s) > self.limit:
                if not truncate:
                    raise InputTooLongError(f"input {i} has {len(s)} tokens but at most "
                                            f"{self.limit} are allowed", index=i,
                                            tokens=len(s), limit=self.limit)
                s = [*s[: self.limit - 1], eos]
            seqs.append(s)
        return seqs

    def embed_token_ids(self, ids: Sequence[Sequence[int]], *, dimensions: int | None = None,
                        truncate: bool = False, normalize: bool = True,
                        prepared: bool = False) -> np.ndarray:
        """Embed pre-tokenised inputs (see :meth:`prepare_token_ids`); rows in input order.

        Rows are unit vectors of ``dimensions`` (Matryoshka: truncated, then re-normalised);
        ``normalize=False`` returns the raw pooled rows' first ``dimensions`` components.
        ``prepared=True``: ``ids`` came from :meth:`prepare_token_ids` or :meth:`tokenize`
        already (the server's case), so they are not checked again.
        """
        dims = check_dimensions(dimensions, self.dimensions, minimum=self.min_dimensions)
        seqs = ([list(s) for s in ids] if prepared
                else self.prepare_token_ids(ids, truncate=truncate))
        if not seqs:
            return np.zeros((0, dims), dtype=np.float32)
        raw = self._run(seqs, None)
        return truncate_dimensions(raw, dims) if normalize else raw[:, :dims]

    def _run(self, seqs: list[list[int]], progress: Progress | None) -> np.ndarray:
        """Schedule sequences into token-budget batches; rows come back in input order."""
        out = np.empty((len(seqs), self.dimensions), dtype=np.float32)
        for batch in plan_batches([len(s) for s in seqs], self.scheduler):
            out[batch] = self.engine.forward([seqs[i] for i in batch])
            if progress is not None:
                progress.update(len(batch))
        return out
