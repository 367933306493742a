"""The reranking contract shared by every reranker: the local Qwen3-Reranker and remote APIs.

A reranker implements one method, :meth:`BaseReranker._scores` (one query, its documents in,
one relevance score per document out, in input order) and sets a few attributes. What users
call — :meth:`~BaseReranker.rerank` (best first, ``top_n``), :meth:`~BaseReranker.score`
(any (query, document) pairs) — and the input checks are derived here once, so every backend
answers the same way. Model strings become rerankers in :func:`smysl.registry.load_reranker`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, SupportsIndex

import numpy as np

from smysl.base import Pending, check_flag, fingerprint_of, positive_int
from smysl.prompts import expand_preset
from smysl.tokenize import Direction, check_unicode


class PairError(ValueError):
    """Pair ``index`` cannot be scored as asked, because of its ``part`` (its query with the
    instruction, or its document): what a server names as the field to mend."""

    def __init__(self, index: int, part: Literal["query", "document"], problem: str) -> None:
        self.index, self.part, self.problem = index, part, problem
        super().__init__(f"pair {index}: {problem}")


@dataclass(frozen=True)
class RerankerInfo:
    """What a loaded reranker is, for ``/info``, reports and index records."""

    #: Model name as users and clients refer to it.
    name: str
    #: Scheme it runs through (``qwen3``, ``siliconflow``, ``cohere``...).
    backend: str
    #: Most tokens of one (query, document) prompt, None when the backend does not say.
    max_tokens: int | None
    #: Whether an instruction (the Qwen3-Reranker ``<Instruct>`` line) is taken.
    instruction_aware: bool
    #: Weight dtype and quantisation (local engines), None for remote APIs.
    dtype: str | None = None
    quantization: str | None = None
    #: Where it computes (``cpu``, ``cuda:0``), None for remote APIs.
    device: str | None = None
    #: What a local engine's linear layers run (see :attr:`smysl.base.ModelInfo.kernel`).
    kernel: str | None = None
    #: A local engine's slice size and when ``smysl tune`` measured it (see
    #: :attr:`smysl.base.ModelInfo.slice_tokens`).
    slice_tokens: int | None = None
    tuned_at: str | None = None
    #: A local engine's CPU threads (see :attr:`smysl.base.ModelInfo.threads`).
    threads: int | None = None
    #: Process id of an engine running in a child process, else None.
    process: int | None = None


class RerankTokens(Protocol):
    """Prompt token ids in, scores out (the local engine offers it through
    :meth:`BaseReranker.token_level`): the server tokenises each request on arrival and lets
    pairs of any requests share a forward pass."""

    @property
    def batch_tokens(self) -> int:
        """Token budget of one forward pass the engine is tuned for."""
        ...

    @property
    def cut_chars(self) -> int:
        """Characters of a document that truncation of its end may read on a server (passed
        as ``tokenize(read_chars=...)``; the tokens kept are the whole document's, or the
        pair is refused)."""
        ...

    def tokenize(self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None,
                 truncate: bool = False, direction: Direction = "right",
                 max_document_tokens: int | None = None,
                 read_chars: int | None = None) -> list[list[int]]:
        """Prompt ids of each (query, document) pair, exactly as scored; truncation keeps a
        document's beginning (``right``) or end (``left``), ``max_document_tokens`` (which
        implies truncation) at most that many of its tokens; ``read_chars``: truncating the
        end, read at most that many characters of a document (more needed:
        :class:`PairError`); a pair whose query and instruction leave no room for its document:
        :class:`PairError` too."""
        ...

    def prepared_scores(self, ids: list[list[int]]) -> np.ndarray:
        """float32 ``[len(ids), 2]``: each prompt's score and its raw form (for Qwen3-Reranker
        P("yes") and the logit difference ``yes - no``), each row independent of the batch."""
        ...

    def start_scores(self, ids: list[list[int]]) -> Pending:
        """:meth:`prepared_scores`, started: the returned call waits for them (see
        :attr:`queues` for when it returns)."""
        ...

    @property
    def queues(self) -> int:
        """How many calls of :meth:`start_scores` may be started behind the one whose scores
        are awaited (as :attr:`smysl.base.TokenLevel.queues`): 0 when it returns with them
        computed."""
        ...


def pair_of(pair: object, i: int) -> tuple[str, str]:
    """Pair ``i`` of a ``score`` call as (query, document): a tuple, list or row of a numpy
    array of two strings; else a ``ValueError`` naming it."""
    if isinstance(pair, np.ndarray) and pair.ndim == 1:
        pair = tuple(pair.tolist())
    if not (isinstance(pair, tuple | list) and len(pair) == 2
            and all(isinstance(x, str) for x in pair)):
        raise ValueError(f"pair {i} must be a (query, document) pair of strings")
    return str(pair[0]), str(pair[1])


class BaseReranker(abc.ABC):
    """(query, documents) in, relevance scores out. Subclasses implement :meth:`_scores`.

    Scores are comparable within one query (Qwen3-Reranker: P("yes") in [0, 1]; remote APIs:
    their ``relevance_score``); higher is more relevant.
    """

    #: Model name as users and clients refer to it.
    name: str = "unknown"
    #: Scheme the backend belongs to (see :mod:`smysl.registry`).
    backend: str = "custom"
    #: Most tokens of one (query, document) prompt, None when the backend does not say.
    max_tokens: int | None = None
    #: Whether ``instruction=`` is taken (others reject it rather than ignore it).
    instruction_aware: bool = False
    #: An upstream API rather than a model computed here (see
    #: :attr:`smysl.base.BaseEmbedder.remote`).
    remote: bool = False
    #: The model string :func:`smysl.load_reranker` loaded it from, None when built directly.
    source: str | None = None

    @property
    def healthy(self) -> bool:
        """Whether the backend can still compute (False when, say, its engine process died)."""
        return True

    def info(self) -> RerankerInfo:
        """What this reranker is; backends that know more (dtype, device) extend it."""
        return RerankerInfo(name=self.name, backend=self.backend, max_tokens=self.max_tokens,
                            instruction_aware=self.instruction_aware)

    def fingerprint(self) -> str:
        """What the reranker *is*, for caches of its scores (see
        :meth:`smysl.base.BaseEmbedder.fingerprint`): this default hashes :meth:`info`'s fields
        (right for remote APIs) but where it runs (the engine process's pid); the local engine
        hashes its checkpoint's files."""
        fields = dataclasses.asdict(self.info())
        del fields["process"]  # changes every run; and the hashes made before it existed
        return fingerprint_of(fields)

    def token_level(self) -> RerankTokens | None:
        """The token-id interface when the backend has one (the local engine), else None."""
        return None

    def usage_report(self) -> str | None:
        """A line on what was spent (paid APIs: tokens, requests, cost), None when nothing is."""
        return None

    @abc.abstractmethod
    def _scores(self, query: str, documents: list[str], *, instruction: str | None,
                truncate: bool) -> np.ndarray:
        """Scores of checked inputs: float ``[len(documents)]`` in input order.

        ``instruction`` is None on backends that are not :attr:`instruction_aware`. An over-long
        pair raises ``ValueError`` (:class:`~smysl.tokenize.InputTooLongError`) unless
        ``truncate``, which cuts the document's end.
        """

    def _scores_and_keys(self, query: str, documents: list[str], *, instruction: str | None,
                         truncate: bool) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_scores` and the keys :meth:`rerank` orders them by (higher first), from one
        computation. This default ranks by the scores; a backend whose scores saturate
        (Qwen3-Reranker's P("yes") is 1.0 in float32 for every confident document) returns
        finer keys."""
        scores = self._scores(query, documents, instruction=instruction, truncate=truncate)
        return scores, scores

    # ----------------------------------------------------------------- derived API
    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
               top_n: SupportsIndex | None = None, truncate: bool = False
               ) -> list[tuple[int, float]]:
        """``(index, score)`` of each document, best first (ties: input order); ``top_n``
        keeps the best ``top_n``."""
        best = None if top_n is None else positive_int(top_n)  # numpy integers too
        if top_n is not None and best is None:
            raise ValueError(f"top_n must be an integer >= 1, got {top_n!r}")
        scores, keys = self.scores_and_keys(query, documents, instruction=instruction,
                                            truncate=truncate)
        return [(i, float(scores[i])) for i in order(keys, scores)[:best]]

    def scores_and_keys(self, query: str, documents: Sequence[str], *,
                        instruction: str | None = None, truncate: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """float64 ``[len(documents)]`` twice, in input order: each document's score and the
        key :meth:`rerank` orders by (higher first; :func:`order`). They differ where scores
        saturate (a Qwen3-Reranker's P("yes") is 1.0 for every confident document, its key the
        logit difference): what ranks documents apart from their scores (an evaluation with
        cached scores) needs the keys."""
        docs = self._check(query, documents, instruction)
        if not docs:
            return np.empty(0), np.empty(0)
        scores, keys = self._scores_and_keys(query, docs, instruction=instruction,
                                             truncate=check_flag(truncate, "truncate"))
        return self._checked(scores, len(docs)), self._checked(keys, len(docs))

    def score(self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None,
              truncate: bool = False) -> list[float]:
        """Score of each (query, document) pair, in input order. Pairs that share a query are
        scored in one :meth:`_scores` call."""
        if isinstance(pairs, str | bytes):
            raise ValueError("pairs must be a sequence of (query, document) pairs")
        # any iterable of pairs, as the local reranker takes
        pairs = [pair_of(p, i) for i, p in enumerate(pairs)]
        by_query: dict[str, list[int]] = {}
        for i, pair in enumerate(pairs):
            by_query.setdefault(pair[0], []).append(i)
        out = np.empty(len(pairs), dtype=np.float64)
        for query, rows in by_query.items():
            docs = self._check(query, [pairs[i][1] for i in rows], instruction)
            out[rows] = self._checked_scores(query, docs, instruction, truncate)
        return [float(s) for s in out]

    def share(self) -> BaseReranker:
        """A picklable twin that other processes rerank with, computing on this reranker's
        backend (the HTTP workers of ``smysl serve --workers``); closing it leaves this one
        running. NotImplementedError for backends that cannot be shared."""
        raise NotImplementedError(f"{type(self).__name__} cannot be shared with other processes "
                                  "(a local reranker whose engine runs in a child process can)")

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for most backends
        """Release resources (connections, an engine process). Safe to call twice."""

    def __enter__(self) -> BaseReranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- checks
    def _check(self, query: str, documents: Sequence[str], instruction: str | None) -> list[str]:
        if not isinstance(query, str):
            raise ValueError(f"the query must be a string, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("the query is empty")
        # a 1-d numpy array of strings too, as embed takes texts
        if (isinstance(documents, str | bytes)
                or not isinstance(documents, Sequence | np.ndarray)
                or (isinstance(documents, np.ndarray) and documents.ndim != 1)):
            what = (f"a {documents.ndim}-d array" if isinstance(documents, np.ndarray)
                    else type(documents).__name__)
            raise TypeError(f"documents must be a list of strings, not {what}")
        docs = list(documents)
        check_unicode(query, "the query")
        for i, d in enumerate(docs):
            if not isinstance(d, str):
                raise ValueError(f"documents[{i}] must be a string, got {type(d).__name__}")
            check_unicode(d, f"documents[{i}]")
        self.check_instruction(instruction)
        return docs

    def check_instruction(self, instruction: str | None) -> None:
        """ValueError unless ``instruction`` is None or a string this reranker takes (see
        :attr:`instruction_aware`): a preset's name (``"qa"``) is taken as its sentence
        (:func:`~smysl.prompts.expand_preset`), a misspelt one refused."""
        if instruction is None:
            return
        if not isinstance(instruction, str):
            raise ValueError("instruction must be a string")
        check_unicode(instruction, "the instruction")
        if not self.instruction_aware:
            raise ValueError(f"reranker {self.name!r} ({self.backend}) takes no "
                             "instruction; drop it")
        expand_preset(instruction)  # a misspelt preset's name, before any work

    def _checked_scores(self, query: str, docs: list[str], instruction: str | None,
                        truncate: bool) -> np.ndarray:
        return self._checked(self._scores(query, docs, instruction=instruction,
                                          truncate=check_flag(truncate, "truncate")), len(docs))

    def _checked(self, values: np.ndarray, n: int) -> np.ndarray:
        scores = np.asarray(values, dtype=np.float64)
        if scores.shape != (n,):
            raise RuntimeError(f"reranker {self.name!r} returned {scores.shape} scores for "
                               f"{n} documents")
        if not np.isfinite(scores).all():
            raise RuntimeError(f"reranker {self.name!r} returned a non-finite score")
        return scores


def order(keys: Sequence[float] | np.ndarray,
          scores: Sequence[float] | np.ndarray | None = None) -> list[int]:
    """Indices best first by ``keys``, equal keys by ``scores`` (a float32 logit difference
    can tie where the P("yes") computed from it does not), then in input order: the one
    ordering rule of every route."""
    k = np.asarray(keys, dtype=np.float64)
    if scores is None:
        return [int(i) for i in np.argsort(-k, kind="stable")]
    return [int(i) for i in np.lexsort((-np.asarray(scores, dtype=np.float64), -k))]
