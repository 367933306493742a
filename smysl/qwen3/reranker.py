"""Qwen3-Reranker on the native engine: a (query, document) pair in, P("yes") out.

Qwen3-Reranker is a ``Qwen3ForCausalLM`` asked whether the document meets the query. The prompt
and the score reproduce the model card's reference code (huggingface.co/Qwen/Qwen3-Reranker-0.6B,
"Transformers Usage": ``format_instruction``, ``process_inputs``, ``compute_logits``):

- text = ``<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}``, tokenised without
  special tokens, cut on the right (the document goes first) to ``max_length`` (8,192) minus the
  prefix and suffix, then wrapped in the chat prefix (system line) and the assistant suffix with
  the empty think block;
- score = softmax over the logits of "no" and "yes" at the last position, the "yes" half.

The trunk is :class:`~smysl.qwen3.model.Qwen3Encoder` (through :class:`~smysl.qwen3.engine.Engine`,
so packed, length-sorted batches and the child-process engine come for free): its output is
the final-norm hidden state of each sequence's last token, and only the two head rows of "no"
and "yes" (:func:`~smysl.qwen3.hub.read_rows`) are ever multiplied with it; the rest of the
vocabulary is never computed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, SupportsIndex

import numpy as np
from tokenizers import Tokenizer

from smysl.base import Pending, check_flag, fingerprint_files, positive_int
from smysl.options import ModelOptions
from smysl.prompts import expand_preset
from smysl.qwen3.contract import (
    EngineLike,
    OnEngine,
    Submit,
    batch_tokens,
    require_torch,
    run_ahead,
    start_all,
    start_engine,
)
from smysl.qwen3.hub import Checkpoint, read_checkpoint, read_rows, resolve
from smysl.rerank import BaseReranker, PairError, RerankerInfo, RerankTokens, pair_of
from smysl.scheduler import SchedulerConfig, plan_batches
from smysl.tokenize import (
    CUT_CHARS_PER_TOKEN,
    CutProof,
    Direction,
    InputTooLongError,
    check_unicode,
    counted_whole,
)

#: The model card's ``prefix``: the system line and the opening of the user turn.
PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the "
          "Query and the Instruct provided. Note that the answer can only be \"yes\" or "
          "\"no\".<|im_end|>\n<|im_start|>user\n")
#: The model card's ``suffix``: the assistant turn with an empty think block.
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
#: The model card's ``format_instruction`` template and its default instruction.
PAIR_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
DEFAULT_INSTRUCTION = ("Given a web search query, retrieve relevant passages that answer the "
                       "query")
#: The model card's ``max_length``: the most tokens of a whole prompt, prefix and suffix included.
MAX_TOKENS = 8192
#: Answer tokens, in the order the model card stacks their logits (``[false, true]``).
ANSWERS = ("no", "yes")
#: Truncating a document's end, a document over ``max_tokens * CUT_CHARS_PER_TOKEN``
#: characters is cut to that many before it is tokenised, as TEI cuts characters first; a cut
#: that could change the tokens kept is widened (:class:`~smysl.tokenize.CutProof`), so the
#: tokens are those of the whole document. The server lets it read ``READ_CUTS`` times that
#: (:attr:`Reranker.cut_chars`, what it charges a document), no more.
READ_CUTS = 4


def format_pair(query: str, document: str, instruction: str | None = None) -> str:
    """The text between prefix and suffix (the model card's ``format_instruction``)."""
    return PAIR_TEMPLATE.format(instruction=DEFAULT_INSTRUCTION if instruction is None
                                else instruction, query=query, document=document)


class Reranker(OnEngine, BaseReranker):
    """Qwen3-Reranker on the native engine (CPU or CUDA). Build it with :meth:`load` (or any
    reranker model string with :func:`smysl.load_reranker`).

    >>> r = Reranker.load("Qwen/Qwen3-Reranker-0.6B")                    # doctest: +SKIP
    >>> r.rerank("capital of France?", ["Berlin is...", "Paris is..."])   # doctest: +SKIP
    [(1, 0.98...), (0, 0.01...)]
    """

    backend = "qwen3"
    instruction_aware = True
    max_tokens: int

    def __init__(self, engine: EngineLike, tokenizer: Tokenizer, head: np.ndarray, *,
                 name: str, max_tokens: int | None = None, max_batch_tokens: int | None = None,
                 max_batch_size: int | None = None, shared_prefix: bool = True,
                 files: Sequence[Path] = ()) -> None:
        """``head``: the output-head rows of :data:`ANSWERS` ("no", "yes"), ``[2, hidden]``.
        ``shared_prefix``: prompts of one query compute their common head once (CPU);
        ``files``: the checkpoint's files, for :meth:`fingerprint`."""
        if head.shape != (2, engine.hidden_size):
            raise ValueError(f"head rows must be [2, {engine.hidden_size}] (no, yes), "
                             f"got {list(head.shape)}")
        self.engine = engine
        self.name = name
        self.files = list(files)
        #: [2, H] float64: the output-head rows of "no" and "yes".
        self.head = head.astype(np.float64)
        self.tokenizer = tokenizer
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.prefix = self.tokenizer.encode(PREFIX, add_special_tokens=False).ids
        self._cut_proof = CutProof(self.tokenizer)
        self.suffix = self.tokenizer.encode(SUFFIX, add_special_tokens=False).ids
        #: Tokens that end a prompt's shared head (``<Document>:``), None: no sharing.
        self.marker: list[int] | None = None
        if shared_prefix:
            marker = self.tokenizer.encode("<Document>:", add_special_tokens=False).ids
            probe = self.tokenizer.encode(format_pair("q?", "x"), add_special_tokens=False).ids
            self.marker = marker if _find(probe, marker) >= 0 else None
        #: Most tokens of one whole prompt (prefix and suffix included).
        self.max_tokens = min(max_tokens or MAX_TOKENS, engine.max_positions)
        if self.max_tokens <= len(self.prefix) + len(self.suffix):
            raise ValueError(f"max_tokens {self.max_tokens} leaves no room for the pair: the "
                             f"prompt alone takes {len(self.prefix) + len(self.suffix)} tokens")
        self._batch_tokens = max_batch_tokens or batch_tokens(engine.device)
        self.scheduler = SchedulerConfig(
            max_batch_tokens=self._batch_tokens,
            max_batch_size=max_batch_size or SchedulerConfig.max_batch_size)

    @classmethod
    def load(cls, model: str, options: ModelOptions | None = None, *,
             shared_prefix: bool = True, **kwargs: Any) -> Reranker:
        """Load a local Qwen3-Reranker checkpoint: a directory or a Hub repo id
        (``Qwen/Qwen3-Reranker-0.6B``). ``options`` / ``kwargs`` are
        :class:`~smysl.options.ModelOptions` fields (``device``, ``dtype``, ``quantize``,
        ``max_tokens``, ``process``...); ``shared_prefix=False`` computes every prompt whole."""
        require_torch()
        given, unknown = ModelOptions.split(kwargs)
        if unknown:
            raise TypeError(f"unexpected options for a local reranker: {sorted(unknown)}")
        opts = (options or ModelOptions()).replace(**given.given())
        root = resolve(model, revision=opts.revision)
        if root.is_file():  # a GGUF: said before its embedding-model checks refuse it as one
            from smysl.qwen3.gguf import is_gguf

            raise ValueError(f"{model}: a reranker loads from a safetensors checkpoint "
                             "(Qwen/Qwen3-Reranker-*), not a GGUF file" if is_gguf(root) else
                             f"{model}: a reranker loads from its checkpoint directory "
                             "(config, tokenizer and weights), not from one file")
        ckpt = read_checkpoint(root, name=model)
        ckpt.check_max_tokens(opts.max_tokens)
        tokenizer = Tokenizer.from_file(str(ckpt.tokenizer_file))
        rows = [tokenizer.token_to_id(a) for a in ANSWERS]
        if None in rows:
            raise ValueError(f"{model}: the tokenizer has no {ANSWERS} tokens; not a "
                             "Qwen3-Reranker")
        head = read_head_rows(ckpt, [int(r) for r in rows if r is not None])
        engine = start_engine(ckpt, opts)
        return cls(engine, tokenizer, head, name=model, max_tokens=opts.max_tokens,
                   max_batch_tokens=opts.max_batch_tokens, max_batch_size=opts.max_batch_size,
                   shared_prefix=shared_prefix, files=ckpt.files)

    @property
    def healthy(self) -> bool:
        """False once an engine process has exited."""
        return self.engine.alive

    # ------------------------------------------------------------------ tokens
    @property
    def cut_chars(self) -> int:
        """Characters of a document the server lets truncation of its end read
        (``tokenize(read_chars=...)``; see :data:`CUT_CHARS_PER_TOKEN`)."""
        return self.max_tokens * CUT_CHARS_PER_TOKEN * READ_CUTS

    def tokenize(self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None,
                 truncate: bool = False, direction: Direction = "right",
                 max_document_tokens: SupportsIndex | None = None,
                 read_chars: int | None = None) -> list[list[int]]:
        """Prompt token ids of each (query, document) pair, exactly as scored.

        A prompt over :attr:`max_tokens` raises :class:`~smysl.tokenize.InputTooLongError`
        unless ``truncate``, which cuts the document's end (the model card cuts the text on the
        right) or, with ``direction="left"``, its beginning; the prompt template, instruction
        and query stay whole. ``max_document_tokens`` keeps at most that many tokens of each
        document (Cohere's ``max_tokens_per_doc``) and implies ``truncate``. A query and
        instruction that do not fit on their own raise ``ValueError``.

        Truncating a document's end reads its first ``max_tokens * CUT_CHARS_PER_TOKEN``
        characters, more only where the tokens kept could differ from the whole document's;
        ``read_chars`` caps that (the server's :attr:`cut_chars`): a document whose kept
        tokens cannot be told within it raises ``ValueError``.
        """
        if direction not in ("right", "left"):
            raise ValueError(f"truncation direction must be 'right' or 'left', got {direction!r}")
        limit = None if max_document_tokens is None else positive_int(max_document_tokens)
        if max_document_tokens is not None:
            if limit is None:
                raise ValueError("max_document_tokens must be an integer >= 1, got "
                                 f"{max_document_tokens!r}")
            truncate = True
        check_unicode(instruction, "the instruction")
        instruction = expand_preset(instruction)  # "qa" was sent as the word "qa"
        checked: list[tuple[str, str]] = []
        for i, pair in enumerate(pairs):
            query, document = pair_of(pair, i)
            if not query.strip():
                raise ValueError(f"pair {i} has an empty query")
            check_unicode(query, f"the query of pair {i}")
            check_unicode(document, f"the document of pair {i}")
            checked.append((query, document))
        # a cut from the left would change which tokens come before the document (the
        # template's last space joins the document's first word): the left reads it whole
        cut = (self.max_tokens * CUT_CHARS_PER_TOKEN if truncate and direction == "right"
               else None)
        pieces = [_cut(d, cut) for _, d in checked]
        if not truncate:  # refused, a huge one is counted only as far as proves it too long
            pieces = [d[:self.max_tokens * CUT_CHARS_PER_TOKEN]
                      if len(d) > counted_whole(self.max_tokens)
                      else d for d in pieces]
        texts = [format_pair(q, piece, instruction) for (q, _), piece in zip(checked, pieces,
                                                                              strict=True)]
        fixed = len(self.prefix) + len(self.suffix)
        budget = self.max_tokens - fixed  # the model card's max_length - prefix - suffix
        out = []
        for i, enc in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            (query, document), piece, text = checked[i], pieces[i], texts[i]
            while True:
                ids, offsets = enc.ids, enc.offsets
                start = len(text) - len(piece)  # where the document begins
                # tokens wholly before it (the first document token may hold the template's
                # space before the document: it counts as the document's)
                head = sum(1 for _, end in offsets if end <= start)
                keep = len(ids) - head if limit is None else min(len(ids) - head, limit)
                if head + keep > budget:
                    # the query's fault first, truncation or not: without it the document was
                    # blamed, and the truncation it advised failed on the query
                    if head >= budget:
                        raise PairError(i, "query", f"the instruction and query take "
                                        f"{head + fixed} tokens, the reranker at most "
                                        f"{self.max_tokens} with the document; shorten the "
                                        "query")
                    if not truncate:
                        # over the budget already within the cut: its tokens up to one past
                        # the budget are the whole document's where a word end proves them
                        wider = (None if len(piece) == len(document) else
                                 self._cut_proof.widened(document, len(piece),
                                                         offsets[budget][1] - start))
                        if wider is None:
                            raise InputTooLongError(
                                index=i, limit=self.max_tokens, who="the reranker",
                                at_least=len(piece) < len(document),
                                tokens=(budget + 1 if len(piece) < len(document)
                                        else len(ids)) + fixed)
                        piece = _cut(document, wider)
                        text = format_pair(query, piece, instruction)
                        enc = self.tokenizer.encode(text, add_special_tokens=False)
                        continue
                    keep = budget - head
                lo, hi = ((head, head + keep) if direction == "right"
                          else (len(ids) - keep, len(ids)))
                if len(piece) == len(document):
                    break
                # the kept tokens must end by a proven word end (where the cut holds more
                # than are kept; else it is read twice as long)
                wider = self._cut_proof.widened(
                    document, len(piece), offsets[hi - 1][1] - start if hi < len(ids) else None)
                if wider is None:
                    break
                # up to read_chars (a server charged a document that much, no more)
                if read_chars is not None and len(piece) >= read_chars:
                    raise PairError(
                        i, "document", f"the tokens to keep of the document cannot be told "
                        f"from its first {len(piece)} characters (no word end after them, or "
                        "fewer tokens than the reranker takes); send it cut, or without "
                        "truncation")
                piece = _cut(document, wider if read_chars is None else min(wider, read_chars))
                text = format_pair(query, piece, instruction)
                enc = self.tokenizer.encode(text, add_special_tokens=False)
            out.append(self.prefix + list(ids[:head]) + list(ids[lo:hi]) + self.suffix)
        return out

    # ------------------------------------------------------------------ scores
    @property
    def batch_tokens(self) -> int:
        """Token budget of one forward pass (the server's reranking batches use it)."""
        return self._batch_tokens

    def token_level(self) -> RerankTokens:
        return self

    def prepared_scores(self, ids: list[list[int]]) -> np.ndarray:
        """float32 ``[n, 2]`` of prompts from :meth:`tokenize`: P("yes") and the logit
        difference ``yes - no`` (its sigmoid is P("yes")), both from one float64 difference.
        On CUDA the next batch is queued while one runs (:func:`run_ahead`)."""
        return _scores_of(self._diffs(ids))

    def _diffs(self, ids: list[list[int]]) -> np.ndarray:
        """float64 ``[n]``: each prompt's logit difference ``yes - no``."""
        plan = list(plan_batches([len(s) for s in ids], self.scheduler))
        return self._from_rows(plan, run_ahead(self._submit(ids), plan, self.engine.queues))

    def start_scores(self, ids: list[list[int]]) -> Pending:
        """:meth:`prepared_scores`, started: every batch of ``ids`` is started
        (:meth:`~smysl.qwen3.contract.EngineLike.start`) before this returns, so the caller
        bounds ``ids`` (the server passes one of its batches), and ``cancel()`` stops them."""
        plan = list(plan_batches([len(s) for s in ids], self.scheduler))
        wait, cancel = start_all(self._submit(ids, self.engine.start), plan)
        return Pending(lambda: _scores_of(self._from_rows(plan, wait())), cancel)

    def _submit(self, ids: list[list[int]],
                start: Callable[[list[list[int]], list[int] | None], Pending] | None = None
                ) -> Submit[list[int]]:
        """Starts the pass of one batch of ``ids`` (given by index) with ``start`` (default:
        the engine's ``submit``), each prompt's shared head computed once per batch (CPU; see
        :meth:`head_length`)."""
        heads = [self.head_length(s) for s in ids] if self.marker else None
        run = start or self.engine.submit

        def submit(batch: list[int]) -> Pending:
            return run([ids[i] for i in batch], [heads[i] for i in batch] if heads else None)

        return submit

    def _from_rows(self, plan: list[list[int]], hidden: Iterable[np.ndarray]) -> np.ndarray:
        """Logit differences ``yes - no`` from each planned batch's pooled rows ``[b, H]``
        -> float64 ``[n]``."""
        diff = np.empty(sum(map(len, plan)), dtype=np.float64)
        for batch, rows in zip(plan, hidden, strict=True):
            # [b, 1, H] * [1, 2, H] summed per row: each row's result is independent of the
            # batch it came in (a GEMM may pick other kernels for other row counts)
            logits = (rows.astype(np.float64)[:, None, :] * self.head[None]).sum(-1)  # no, yes
            diff[batch] = logits[:, 1] - logits[:, 0]
        return diff

    def score_prepared(self, ids: list[list[int]], *, raw: bool = False) -> np.ndarray:
        """Scores of prompts from :meth:`tokenize`: float32 ``[n]`` P("yes"), or with ``raw``
        the logit difference ``yes - no``."""
        return self.prepared_scores(ids)[:, 1 if raw else 0]

    def head_length(self, ids: list[int]) -> int:
        """Tokens of a prompt up to its first ``<Document>:`` (the system line, instruction
        and query: the same for every document of a query), 0 without one. A rule of the
        prompt alone, so a score never depends on what else is in its batch."""
        if self.marker is None:
            return 0
        at = _find(ids, self.marker, start=len(self.prefix))
        return at + len(self.marker) if at >= 0 else 0

    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        return self._scores_and_keys(query, documents, instruction=instruction,
                                     truncate=truncate)[0]

    def _scores_and_keys(self, query: str, documents: list[str], *, instruction: str | None,
                         truncate: bool) -> tuple[np.ndarray, np.ndarray]:
        """P("yes") as :meth:`score_prepared` gives it, ranked by the float64 logit
        difference: P("yes") rounds to 1.0 in float32 once the difference passes ~17, where
        the difference still tells documents apart."""
        ids = self.tokenize([(query, d) for d in documents], instruction=instruction,
                            truncate=truncate)
        diffs = self._diffs(ids)
        return _scores_of(diffs)[:, 0], diffs

    def score(self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None,
              truncate: bool = False) -> list[float]:
        """P("yes") of each (query, document) pair, in input order; all pairs are packed into
        the same length-sorted batches, whatever their query."""
        if isinstance(pairs, str | bytes):
            raise ValueError("pairs must be a sequence of (query, document) pairs")
        self.check_instruction(instruction)  # instruction=5 was an AttributeError deep down
        truncate = check_flag(truncate, "truncate")  # "no" cut the documents
        pairs = list(pairs)  # a numpy array of pairs: `not pairs` was ambiguous
        if not pairs:
            return []
        ids = self.tokenize(pairs, instruction=instruction, truncate=truncate)
        return [float(s) for s in self.score_prepared(ids)]

    def info(self) -> RerankerInfo:
        return RerankerInfo(name=self.name, backend=self.backend, max_tokens=self.max_tokens,
                            instruction_aware=True,
                            dtype=self.engine.dtype,
                            quantization=self.engine.quantization,
                            device=self.engine.device, kernel=self.engine.kernel,
                            slice_tokens=self.engine.chunk, tuned_at=self.engine.tuned_at,
                            threads=self.engine.threads, process=self.engine.pid)

    def fingerprint(self) -> str:
        """Hash of the checkpoint's files (size + three 1 MiB windows each), the dtype, the
        quantisation, the token limit and whether heads are shared (scores differ by float
        error); the name plays no part. Without files: :class:`BaseReranker`'s default."""
        if not self.files:
            return super().fingerprint()
        return fingerprint_files(self.files, {
            "backend": "qwen3-reranker", "dtype": self.engine.dtype,
            "quantization": self.engine.quantization, "max_tokens": self.max_tokens,
            "shared_prefix": self.marker is not None})



def _scores_of(diff: np.ndarray) -> np.ndarray:
    """float32 ``[n, 2]``: P("yes") and the logit difference, from float64 differences."""
    # softmax over [no, yes], "yes" half == sigmoid(yes - no)
    return np.stack([1.0 / (1.0 + np.exp(-diff)), diff], axis=1).astype(np.float32)


def _cut(document: str, chars: int | None) -> str:
    """``document`` cut to its first ``chars`` characters."""
    return document if chars is None else document[:chars]


def _find(seq: list[int], part: list[int], start: int = 0) -> int:
    """Index of the first occurrence of ``part`` in ``seq`` at or after ``start``, else -1."""
    n = len(part)
    first = part[0]
    for i in range(start, len(seq) - n + 1):
        if seq[i] == first and seq[i : i + n] == part:
            return i
    return -1


def load(rest: str, options: ModelOptions, *, shared_prefix: bool = True,
         **kwargs: Any) -> Reranker:
    """The registry's factory for local Qwen3-Reranker strings (see
    :func:`smysl.registry.load_reranker`)."""
    if kwargs:
        raise TypeError(f"unexpected options for a local reranker: {sorted(kwargs)}")
    return Reranker.load(rest, options, shared_prefix=shared_prefix)


def read_head_rows(ckpt: Checkpoint, rows: Sequence[int]) -> np.ndarray:
    """Rows ``rows`` of the output head as float32 ``[len(rows), H]``: ``lm_head.weight``, or
    the token embeddings when the config ties them (transformers then saves no ``lm_head``).
    Qwen3-Reranker needs only the rows of its answer tokens "yes" and "no"."""
    tied = bool(ckpt.config.get("tie_word_embeddings", False))
    # a Qwen3-Reranker is a Qwen3ForCausalLM: its weights are named "model.*". A bare
    # Qwen3Model's ("embed_tokens.weight", no head) is an embedding checkpoint: it scored
    # every document 1.0 with the embedding rows taken for a head
    names = ("model.embed_tokens.weight",) if tied else ("lm_head.weight",)
    head = read_rows(ckpt, names, rows)
    if head is None and read_rows(ckpt, ("embed_tokens.weight",), rows[:1]) is not None:
        raise ValueError(f"{ckpt.root}: a Qwen3Model checkpoint without an output head (an "
                         f"embedding model?), not a Qwen3-Reranker (a Qwen3ForCausalLM, "
                         f"e.g. Qwen/Qwen3-Reranker-0.6B)")
    if head is None:
        raise ValueError(f"{ckpt.root}: checkpoint lacks {names[0]} (the output head"
                         f"{', tied to the token embeddings' if tied else ''})")
    if not np.isfinite(head).all():  # as the loader refuses such weights (check_finite)
        raise ValueError(f"{ckpt.root}: {names[0]} holds NaN or inf in the rows of the answer "
                         "tokens: the checkpoint is damaged; download or convert it again")
    return head
