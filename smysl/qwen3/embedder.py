"""The local embedder: text -> prompts/tokens -> token-budget batches -> engine -> vectors."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from smysl.base import (
    BaseEmbedder,
    ModelInfo,
    Pending,
    Progress,
    TokenLevel,
    check_flag,
    fingerprint_files,
    fingerprint_of,
)
from smysl.options import ModelOptions
from smysl.pooling import finish
from smysl.prompts import DEFAULT_TASK, task_of_query_prompt
from smysl.qwen3.contract import (
    BATCH_TOKENS,
    EngineLike,
    OnEngine,
    batch_tokens,
    device_type,
    require_torch,
    start_all,
    start_engine,
)
from smysl.qwen3.hub import Checkpoint, looks_like_reranker, read_checkpoint, resolve
from smysl.scheduler import SchedulerConfig, plan_batches, plan_blocks
from smysl.tokenize import Direction, TextTokens, Tokenizer, TokenSpan, fit_length

#: A rough count of characters per token, to cut a bulk call's texts into blocks of about one
#: batch of tokens each for tokenising while earlier batches compute (Qwen3's tokenizer: ~4
#: for English, fewer for Russian; a block only needs to be of the right order).
BLOCK_CHARS_PER_TOKEN = 4


#: Blocks of a bulk call that grow to full size: the first is 1/16 of a batch of tokens, the
#: next ones 1/8, 1/4 and 1/2, and each goes to the device as soon as it is tokenised, so the
#: GPU starts after ~1/16 of a batch is tokenised instead of a whole batch's worth, and every
#: next block is tokenised while the one before it computes (docs/benchmarks.md, issue 12).
RAMP_BLOCKS = 4


def text_blocks(texts: Sequence[str], chars: int, ramp: int = 0) -> list[tuple[int, int]]:
    """``texts`` cut into consecutive (start, end) ranges of at least ``chars`` characters
    each (the last one shorter), never empty; with ``ramp``, the first ``ramp`` ranges are
    smaller: ``chars / 2**ramp`` characters, doubling."""
    blocks: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, t in enumerate(texts):
        size += len(t)
        if size >= chars >> max(ramp - len(blocks), 0):
            blocks.append((start, i + 1))
            start, size = i + 1, 0
    if start < len(texts):
        blocks.append((start, len(texts)))
    return blocks


class Embedder(OnEngine, BaseEmbedder, TokenLevel):
    """Qwen3-Embedding on the native engine (CPU or CUDA).

    Build it with :meth:`load` (or :func:`smysl.load`); ``embed``/``embed_queries``/
    ``embed_documents`` come from :class:`~smysl.base.BaseEmbedder`, the token-id methods from
    :class:`~smysl.base.TokenLevel`.
    """

    backend = "qwen3"

    def __init__(self, engine: EngineLike, tokenizer: Tokenizer, *, name: str,
                 max_batch_tokens: int | None = None, max_batch_size: int | None = None,
                 default_task: str = DEFAULT_TASK, max_tokens: int | None = None,
                 checkpoint: Checkpoint | None = None, revision: str | None = None) -> None:
        self.engine = engine
        #: Files the fingerprint hashes (None: an engine built by hand; the default applies).
        self.checkpoint = checkpoint
        self.revision = revision
        self._fingerprint: str | None = None
        self.tokenizer = tokenizer
        self.name = name
        self.dimensions = engine.hidden_size
        self.default_task = default_task
        #: Most tokens per input, EOS included: at most the model's positions.
        self.limit = min(max_tokens or engine.max_positions, engine.max_positions)
        self.max_tokens = tokenizer.max_tokens = self.limit
        self.scheduler = SchedulerConfig(
            max_batch_tokens=max_batch_tokens or batch_tokens(engine.device),
            max_batch_size=max_batch_size or SchedulerConfig.max_batch_size)
        self.batch_tokens = self.scheduler.max_batch_tokens
        #: Tokenise a bulk call a block at a time while earlier blocks' batches run (CUDA,
        #: where forward passes are queued and the host is free meanwhile; on CPU tokenising
        #: would compete with the forward passes for the cores).
        self.overlap_tokenize = engine.queues

    @classmethod
    def load(cls, model: str, options: ModelOptions | None = None, *, name: str | None = None,
             **kwargs: Any) -> Embedder:
        """Load a local Qwen3-Embedding checkpoint: a directory, a Hub repo id
        (``Qwen/Qwen3-Embedding-0.6B``), an alias (``qwen3-embedding:0.6b``) or a GGUF file
        (:mod:`smysl.qwen3.gguf`). ``name``: what the model is called (default ``model``).

        ``options`` / ``kwargs`` are :class:`~smysl.options.ModelOptions` fields. With
        ``process=True`` the engine runs in a child process (:mod:`smysl.qwen3.worker`): same
        vectors, and a busy caller such as the HTTP server no longer competes with the forward
        passes for the GIL; ``close()`` stops it. Other model strings (``st:``, providers) load
        through :func:`smysl.load`.
        """
        require_torch()
        given, unknown = ModelOptions.split(kwargs)
        if unknown:
            raise TypeError(f"unexpected options for a local model: {sorted(unknown)}")
        opts = (options or ModelOptions()).replace(**given.given())
        # a revision with a local path or GGUF file is refused by resolve()
        ckpt = read_checkpoint(resolve(model, revision=opts.revision), name=name or model)
        if ckpt.format != "gguf" and looks_like_reranker(ckpt.root, model):
            raise ValueError(f"{model}: a Qwen3-Reranker (named so, without an embedding "
                             "model's modules.json): it scores (query, document) pairs; load "
                             "it with `smysl rerank --model`, `smysl serve --reranker` or "
                             "smysl.load_reranker (an embedding model of "
                             "that name: give it its sentence-transformers files)")
        # the tokenizer first: a bad one fails before any weight is read
        ckpt.check_max_tokens(opts.max_tokens)
        positions = ckpt.positions
        rows = ckpt.config.get("vocab_size")
        if ckpt.format == "gguf":
            from smysl.qwen3.gguf import load_tokenizer

            tokenizer = load_tokenizer(ckpt, positions, rows)
        else:
            tokenizer = Tokenizer(ckpt.tokenizer_file, positions, rows=rows)
        engine = start_engine(ckpt, opts)
        query_prompt = str(ckpt.st_config.get("prompts", {}).get("query", ""))
        task = task_of_query_prompt(query_prompt)
        return cls(engine, tokenizer, name=name or model, max_batch_tokens=opts.max_batch_tokens,
                   max_batch_size=opts.max_batch_size, max_tokens=opts.max_tokens,
                   default_task=DEFAULT_TASK if task is None else task, checkpoint=ckpt,
                   revision=opts.revision)

    # ------------------------------------------------------------------ BaseEmbedder
    @property
    def healthy(self) -> bool:
        """False once an engine process has exited."""
        return self.engine.alive

    def info(self) -> ModelInfo:
        e = self.engine
        return dataclasses.replace(
            super().info(), dtype=e.dtype,
            # a GGUF file's weight type (Q8_0, F16) unless the engine re-quantised them
            quantization=e.quantization or (self.checkpoint.weight_type if self.checkpoint
                                            else None),
            parameters=e.parameters, device=e.device, architecture="qwen3",
            file_format=self.checkpoint.format if self.checkpoint else None,
            file_size=self.checkpoint.file_size if self.checkpoint else None,
            process=e.pid, fingerprint=self.fingerprint(),
            cpu=e.cpu,
            cuda_graphs=e.cuda_graphs or None, kernel=e.kernel, slice_tokens=e.chunk,
            tuned_at=e.tuned_at, threads=e.threads,
            # as many as fit this thread's count: what a bulk call from here runs
            lanes=min(e.lanes, e.threads or e.lanes) if device_type(e.device) == "cpu" else None)

    def fingerprint(self) -> str:
        """Hash of the checkpoint's config, tokenizer and weights (size + three 1 MiB windows
        each), the computing dtype and quantization; computed once. The model name plays no
        part, nor the revision it was asked by: the same snapshot named by its commit, a tag
        or none had two fingerprints (a saved classifier refused its own model)."""
        if self._fingerprint is None:
            e = self.engine
            if self.checkpoint is None:  # the contract's default, without info() (it asks us)
                self._fingerprint = fingerprint_of({
                    "backend": self.backend, "name": self.name, "dimensions": self.dimensions,
                    "dtype": e.dtype, "quantization": e.quantization})
            else:
                ck = self.checkpoint
                files = ck.files
                # "revision" stays, always None: fingerprints made without a commit revision
                # stay valid (those an earlier smysl made with one change, once)
                fields = {"backend": self.backend, "dtype": e.dtype,
                          "quantization": e.quantization, "revision": None}
                if e.numerics:  # only then: other paths' fingerprints stay what they were
                    fields["numerics"] = e.numerics
                self._fingerprint = fingerprint_files(files, fields)
        return self._fingerprint

    def token_level(self) -> TokenLevel:
        return self

    def text_tokens(self) -> TextTokens:
        return self.tokenizer.text_tokens()

    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        blocks = []
        if self.overlap_tokenize:
            budget = self.batch_tokens or BATCH_TOKENS["cuda"]  # None: no budget was set
            blocks = text_blocks(texts, BLOCK_CHARS_PER_TOKEN * budget, RAMP_BLOCKS)
        if len(blocks) < 2:
            return self._run(self.tokenizer.encode(texts, truncate=truncate), progress)
        # the first (small) block is tokenised before anything runs; each next one while the
        # batches of those before it compute (HF tokenizers release the GIL while they encode)
        seqs: list[list[int]] = []

        def arriving() -> Generator[list[int], None, None]:
            with ThreadPoolExecutor(1, thread_name_prefix="smysl-tokenize") as pool:
                def encode(a: int, b: int) -> list[list[int]]:
                    return self.tokenizer.encode(texts[a:b], truncate=truncate, first_index=a)

                ahead = pool.submit(encode, *blocks[0])
                for i in range(len(blocks)):
                    ids = ahead.result()
                    if i + 1 < len(blocks):
                        ahead = pool.submit(encode, *blocks[i + 1])
                    seqs.extend(ids)
                    yield [len(x) for x in ids]

        lengths = arriving()
        try:
            plan = plan_blocks(lengths, self.scheduler, whole=RAMP_BLOCKS)
            return self._run(seqs, progress, plan, count=len(texts))
        finally:  # a failed call stops the tokenising thread now, not when collected
            lengths.close()

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Tokens each text costs as a document, EOS included."""
        return self.tokenizer.count(self._check_texts(texts))

    # ------------------------------------------------------------------ TokenLevel
    def tokenize(self, texts: Sequence[str], *, truncate: bool = False,
                 direction: Direction = "right", max_tokens: int | None = None,
                 head_chars: int = 0) -> list[list[int]]:
        """Token ids exactly as they are embedded (EOS last), within ``max_tokens`` (at most
        the model's limit)."""
        most = self.limit if max_tokens is None else min(max_tokens, self.limit)
        return self.tokenizer.encode(self._check_texts(texts), truncate=truncate,
                                     direction=direction, max_tokens=most,
                                     head_chars=head_chars)

    def prepare_token_ids(self, ids: Sequence[Sequence[int]], *, truncate: bool = False,
                          direction: Direction = "right") -> list[list[int]]:
        """Token ids exactly as they are embedded: every id in the vocabulary, EOS last once
        (appended when missing), over-long input cut (``truncate``: its end, or with
        ``direction="left"`` its beginning) or rejected with
        :class:`~smysl.tokenize.InputTooLongError`; other bad input is ``ValueError``."""
        seqs: list[list[int]] = []
        eos, rows = self.tokenizer.eos_id, self.engine.vocab_rows
        if not isinstance(ids, str | bytes):
            ids = list(ids)  # a generator: the check below used it up, and nothing was embedded
        if isinstance(ids, str | bytes) or any(isinstance(x, int | np.integer) for x in ids):
            raise ValueError("token ids must be a list of token-id lists, one per input (a flat "
                             "list of ids is one input: wrap it, [[...]])")
        for i, seq in enumerate(ids):
            if isinstance(seq, str | bytes):
                raise ValueError(f"input {i} is a string, not a list of token ids")
            # int(1.7) was 1 and int(True) 1: ids are integers, nothing else is taken for one
            odd = [t for t in seq if isinstance(t, bool) or not isinstance(t, int | np.integer)]
            if odd:
                raise ValueError(f"input {i} has items that are not token ids (integers): "
                                 f"{odd[:5]!r}")
            s = [int(t) for t in seq]
            if not s:
                raise ValueError(f"input {i} is an empty token list")
            bad = [t for t in s if not 0 <= t < rows]
            if bad:
                raise ValueError(f"input {i} has token ids outside 0..{rows - 1}: {bad[:5]}")
            if s[-1] != eos:
                s.append(eos)
            seqs.append(fit_length(s, self.limit, eos_id=eos, truncate=truncate, index=i,
                                   direction=direction))
        return seqs

    def decode(self, ids: Sequence[Sequence[int]], *,
               skip_special_tokens: bool = True) -> list[str]:
        size = self.tokenizer.vocab_size
        for i, seq in enumerate(ids):
            bad = [t for t in seq if not 0 <= t < size]
            if bad:  # the tokenizer would leave them out of the text without a word
                raise ValueError(f"input {i} has token ids outside 0..{size - 1}: {bad[:5]}")
        return self.tokenizer.decode_batch(ids, skip_special_tokens=skip_special_tokens)

    def embed_prepared(self, ids: list[list[int]]) -> np.ndarray:
        """Raw pooled rows of ids from :meth:`prepare_token_ids` or :meth:`tokenize`."""
        return self._run(ids, None)

    def start_prepared(self, ids: list[list[int]]) -> Pending:
        """:meth:`embed_prepared`, started: every batch of ``ids`` is started
        (:meth:`~smysl.qwen3.contract.EngineLike.start`) before this returns, so the caller
        bounds ``ids`` (the server passes one of its batches), and ``cancel()`` stops them. On
        CPU a short batch started while a long input's pass computes runs between that
        pass's layers (:mod:`smysl.qwen3.passes`, :class:`smysl.qwen3.worker._Hub`)."""
        plan = list(plan_batches([len(s) for s in ids], self.scheduler))
        wait, cancel = start_all(lambda batch: self.engine.start([ids[i] for i in batch]),
                                 plan)

        def rows() -> np.ndarray:
            out = np.empty((len(ids), self.dimensions), dtype=np.float32)
            for batch, pooled in zip(plan, wait(), strict=True):
                out[batch] = pooled
            return out

        return Pending(rows, cancel)

    def token_spans(self, texts: Sequence[str], *,
                    add_special_tokens: bool = True) -> list[list[TokenSpan]]:
        return self.tokenizer.spans(texts, add_special_tokens=add_special_tokens)

    def embed_token_ids(self, ids: Sequence[Sequence[int]], *, dimensions: int | None = None,
                        truncate: bool = False, normalize: bool = True) -> np.ndarray:
        """Embed pre-tokenised inputs (checked by :meth:`prepare_token_ids`); rows in input
        order, post-processed like :meth:`embed` (``normalize=False``: raw components)."""
        dims = self.check_dimensions(dimensions)
        seqs = self.prepare_token_ids(ids, truncate=check_flag(truncate, "truncate"))
        if not seqs:
            return np.zeros((0, dims), dtype=np.float32)
        return finish(self._run(seqs, None), dims, normalize=normalize)

    def _run(self, seqs: list[list[int]], progress: Progress | None,
             plan: Iterable[list[int]] | None = None, count: int | None = None) -> np.ndarray:
        """Schedule sequences into token-budget batches; rows come back in input order.
        ``plan``: batches of indices into ``seqs`` (default :func:`plan_batches` of them all;
        a streamed plan extends ``seqs`` before it yields the batches that need them, and
        ``count`` says how many there will be)."""
        out = np.empty((len(seqs) if count is None else count, self.dimensions),
                       dtype=np.float32)
        if plan is None:
            plan = plan_batches([len(s) for s in seqs], self.scheduler)
        order: deque[list[int]] = deque()

        def batches() -> Iterator[list[list[int]]]:
            for batch in plan:
                order.append(batch)
                yield [seqs[i] for i in batch]

        # a generator: batch n + 1 is assembled while the engine runs batch n (CUDA)
        for pooled in self.engine.forward_many(batches()):
            batch = order.popleft()
            out[batch] = pooled
            if progress is not None:
                progress.update(len(batch))
        if order:
            raise RuntimeError(f"the engine returned rows for {len(order)} batch(es) too few")
        return out


def load(rest: str, options: ModelOptions, **kwargs: Any) -> Embedder:
    """The registry's factory for local model strings (see :mod:`smysl.registry`)."""
    return Embedder.load(rest, options, **kwargs)


def load_ollama_store(rest: str, options: ModelOptions, **kwargs: Any) -> Embedder:
    """The registry's factory for ``ollama-store:NAME``: the GGUF blob of an Ollama model,
    loaded in this process (no Ollama daemon)."""
    from smysl.ollama_store import model_blob

    return Embedder.load(str(model_blob(rest)), options, name=rest, **kwargs)
