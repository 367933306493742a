"""The embedding contract shared by every backend: the local engine, providers, generic models.

A backend implements one method, :meth:`BaseEmbedder._embed` (fully formatted texts in, one
float32 row per text out, in input order) and sets a few attributes. Everything users call —
``embed``, ``embed_queries``, ``embed_documents`` with instructions, Matryoshka dimensions and
validation — is derived here once, so every backend has the same semantics. What consumers need
beyond that is declared here too: :class:`ModelInfo` (what ``/info``, ``/api/show`` and reports
show) and :class:`TokenLevel` (token ids in and out, offered by the local engine).
"""

from __future__ import annotations

import abc
import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from smysl.pooling import MIN_DIMENSIONS, check_dimensions, finish
from smysl.prompts import DEFAULT_TASK, format_query, resolve_task
from smysl.shown import first_line
from smysl.tokenize import (
    Direction,
    InputTooLongError,
    TextTokens,
    TokenSpan,
    check_unicode,
    fills,
)

Role = Literal["query", "document"]


class Pending:
    """Work started elsewhere (a forward pass, a server batch): call it to wait for its rows
    (it raises what computing them raised); :meth:`cancel` asks that it stop early, as a hint:
    nobody will read the rows. An engine process drops a pass not yet started, and stops a
    CPU pass at its next layer when it holds nothing else still wanted; the call then raises.
    Work done already, or an engine that cannot stop, answers as ever."""

    __slots__ = ("_cancel", "_wait")

    def __init__(self, wait: Callable[[], np.ndarray],
                 cancel: Callable[[], None] | None = None) -> None:
        self._wait, self._cancel = wait, cancel

    def __call__(self) -> np.ndarray:
        return self._wait()

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel()

    @staticmethod
    def of(wait: Callable[[], np.ndarray]) -> Pending:
        """``wait`` as a :class:`Pending` (a backend or engine written to return a plain
        call, as the contracts once said, cannot be cancelled)."""
        return wait if isinstance(wait, Pending) else Pending(wait)


@runtime_checkable
class Progress(Protocol):
    """Anything with tqdm's ``update(n)``: backends report finished texts through it."""

    def update(self, n: int = 1) -> object:
        """``n`` more texts are done."""


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, for ``/info``, ``/api/show``, ``/v1/models`` and eval reports."""

    #: Model name as users and clients refer to it.
    name: str
    #: Scheme it runs through (``qwen3``, ``st``, ``openrouter``...; see :mod:`smysl.registry`).
    backend: str
    #: Native output size and the smallest Matryoshka size.
    dimensions: int
    min_dimensions: int
    #: Most tokens one input may have (EOS included); None when the backend does not say.
    max_tokens: int | None
    #: Whether queries get the ``Instruct: ...\nQuery:`` template (see :mod:`smysl.prompts`).
    instruction_aware: bool
    #: The task queries get when none is given.
    default_task: str
    #: Weight dtype (``float32``, ``bfloat16``...), None when unknown (remote APIs).
    dtype: str | None = None
    #: Weight quantisation (``int8``...), None for none or unknown.
    quantization: str | None = None
    #: Parameter count, None when unknown.
    parameters: int | None = None
    #: Where it computes (``cpu``, ``cuda:0``), None for remote APIs.
    device: str | None = None
    #: The network's family as transformers and GGUF name it (``qwen3``, ``bert``), and the
    #: weights' file format (``safetensors``, ``gguf``); None where unknown (remote APIs).
    architecture: str | None = None
    file_format: str | None = None
    #: Process id of an engine running in a child process, else None.
    process: int | None = None
    #: Bytes of the weight files a local engine loaded (Ollama's ``size``), None elsewhere.
    file_size: int | None = None
    #: Token budget of one forward pass the backend is tuned for, None when it has none.
    batch_tokens: int | None = None
    #: The CPU and the features that decide its compute paths (local engines on CPU, e.g.
    #: ``AMD EPYC (avx2, avx512f, avx512_bf16, avx512_vnni)``), None otherwise.
    cpu: str | None = None
    #: Token counts of the batch shapes a CUDA engine replays as CUDA graphs (None: no graphs).
    cuda_graphs: list[int] | None = None
    #: What a local engine's linear layers run (``onednn``: CPU, weights prepacked at load;
    #: ``onednn-int8``, ``fbgemm-int8``, ``int4``, ``torch``), None for other backends.
    kernel: str | None = None
    #: Tokens per slice of a local engine's per-token work, and when ``smysl tune`` measured it
    #: on this machine (UTC, ISO 8601; None: the defaults). None for other backends.
    slice_tokens: int | None = None
    tuned_at: str | None = None
    #: torch's CPU threads of a local engine on CPU (``threads=``, ``smysl tune``'s measured
    #: count, or torch's default), None otherwise.
    threads: int | None = None
    #: A local CPU engine's lanes: batches of a bulk call computed at once, each on
    #: ``threads // lanes`` threads (``smysl.qwen3.lanes``); None otherwise.
    lanes: int | None = None
    #: Pooling of the hidden states.
    pooling: str = "last_token"
    #: :meth:`BaseEmbedder.fingerprint` where the backend computed one at load (the local
    #: engine, sentence-transformers: a hash of the weights); None elsewhere.
    fingerprint: str | None = None

    @property
    def quantization_level(self) -> str:
        """Ollama's ``quantization_level``: the quantisation, else the dtype (``F32``, ``BF16``)."""
        if self.quantization:
            return self.quantization
        short = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
        return short.get(self.dtype or "", (self.dtype or "").upper())


class TokenLevel(Protocol):
    """Token ids in and out, beyond ``embed`` (the local engine offers it through
    :meth:`BaseEmbedder.token_level`). The server tokenises each request once on arrival and
    lets any requests share a forward pass, whatever their dimensions or normalisation."""

    def tokenize(self, texts: Sequence[str], *, truncate: bool = False,
                 direction: Direction = "right", max_tokens: int | None = None,
                 head_chars: int = 0) -> list[list[int]]:
        """Token ids exactly as embedded (EOS last); input over ``max_tokens`` (default: the
        model's limit) raises :class:`~smysl.tokenize.InputTooLongError` unless ``truncate``,
        which keeps the first ``head_chars`` characters of each text (a query's instruction)
        whichever end it cuts."""
        ...

    def prepare_token_ids(self, ids: Sequence[Sequence[int]], *, truncate: bool = False,
                          direction: Direction = "right") -> list[list[int]]:
        """Client token ids checked and made embeddable (EOS last once, within the limit)."""
        ...

    def decode(self, ids: Sequence[Sequence[int]], *,
               skip_special_tokens: bool = True) -> list[str]:
        """The text of each token-id list (TEI's ``/decode``); an id outside the tokenizer's
        vocabulary raises ``ValueError``."""
        ...

    def embed_prepared(self, ids: list[list[int]]) -> np.ndarray:
        """Raw pooled rows ``[len(ids), dimensions]`` (not normalised) of prepared ids."""
        ...

    def start_prepared(self, ids: list[list[int]]) -> Pending:
        """:meth:`embed_prepared`, started: the returned call waits for the rows (and raises
        what computing them raised). See :attr:`queues` for when it returns."""
        ...

    @property
    def queues(self) -> int:
        """How many calls of :meth:`start_prepared` may be started behind the one whose rows
        are awaited. 0: it returns with the rows computed (CPU); 1 or more: it returns once
        the work is queued, before it has run (a CUDA engine; more for an engine process,
        which merges what arrives while it computes)."""
        ...

    def token_spans(self, texts: Sequence[str], *,
                    add_special_tokens: bool = True) -> list[list[TokenSpan]]:
        """Tokens of each text with UTF-8 byte offsets (TEI's ``/tokenize``)."""
        ...


class UpstreamError(RuntimeError):
    """A remote backend (a paid API, another server) could not answer, for a reason of its
    own: it failed, refused this client's key, asked it to slow down, or did not answer in
    time. Never the caller's input (that is a ``ValueError``).

    A server in front of it answers ``status``: 429 (the upstream's rate limit; wait
    ``retry_after`` seconds when it said), 503 (unavailable), 504 (timed out) or 502 (any
    other upstream failure)."""

    #: The HTTP status a server fronting the backend answers.
    status_to_answer: int = 502
    #: Seconds the upstream asked to wait (its ``Retry-After``), when it said.
    retry_after: float | None = None
    #: What that server tells its own clients: the upstream's status and words, without the
    #: advice meant for whoever runs the backend (its key variable, its URL); its log has the
    #: whole message. None: the message itself.
    reason: str | None = None

    def __init__(self, message: str, *, status_to_answer: int | None = None,
                 retry_after: float | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        if status_to_answer is not None:
            self.status_to_answer = status_to_answer
        self.retry_after = retry_after
        if reason is not None:
            self.reason = reason

    def told_clients(self) -> str:
        """:attr:`reason`, or the message when there is none."""
        return self.reason if self.reason is not None else str(self)

    def brief(self) -> str:
        """:attr:`reason`, or the message's first line: the upstream's words inside a
        message of smysl's (a bad row's, a refusal's)."""
        return self.reason or first_line(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # an exception pickles as ``cls(*args)``, which subclasses' constructors (more
        # arguments than the message) refuse: a Ray actor's error reached the driver as a
        # TypeError. Rebuilt without the constructor, its attributes restored as they were
        return _rebuilt, (type(self), self.args), self.__dict__


def _rebuilt(cls: type[UpstreamError], args: tuple[Any, ...]) -> UpstreamError:
    # made by the __new__ of the built-in class under it: RuntimeError's refuses a class that
    # is a TimeoutError (an OSError) too ("not safe")
    base: Any = cls
    while base.__flags__ & _HEAPTYPE:
        base = base.__base__
    error: UpstreamError = base.__new__(cls)
    error.args = args
    return error


#: ``type.__flags__``'s bit of a class made by a ``class`` statement (not a built-in one).
_HEAPTYPE = 1 << 9


class BaseEmbedder(abc.ABC):
    """Text in, unit float32 vectors out. Subclasses implement :meth:`_embed`."""

    #: Model name as users and clients refer to it.
    name: str = "unknown"
    #: Scheme the backend belongs to (see :mod:`smysl.registry`).
    backend: str = "custom"
    #: Native output size (hidden size); ``dimensions`` may ask for any size in
    #: ``min_dimensions..dimensions``.
    dimensions: int = 0
    #: Smallest Matryoshka size; a model not trained for Matryoshka sets it to ``dimensions``.
    min_dimensions: int = MIN_DIMENSIONS
    #: Most tokens one input may have (EOS included), or None when the backend does not say.
    max_tokens: int | None = None
    #: Whether queries get the Qwen3 ``Instruct: ...\nQuery:`` template.
    instruction_aware: bool = True
    #: Task used for queries when none is given.
    default_task: str = DEFAULT_TASK
    #: Token budget of one forward pass the backend is tuned for (the server batches to it).
    batch_tokens: int | None = None
    #: An upstream API (a provider), which comes back on its own, rather than a model computed
    #: here, which a restart may bring back: ``smysl serve`` exits when a local backend stays
    #: down, never by default for a remote one (:func:`smysl.server.health.exit_after`).
    remote: bool = False
    #: The model string :func:`smysl.load` loaded it from (a local folder made absolute), so
    #: that what records a model (an index) can load it again; None when built directly.
    source: str | None = None

    @property
    def healthy(self) -> bool:
        """Whether the backend can still compute (False when, say, its engine process died)."""
        return True

    def info(self) -> ModelInfo:
        """What this model is; backends that know more (dtype, device...) extend it."""
        return ModelInfo(name=self.name, backend=self.backend, dimensions=self.dimensions,
                         min_dimensions=self.min_dimensions, max_tokens=self.max_tokens,
                         instruction_aware=self.instruction_aware,
                         default_task=self.default_task, batch_tokens=self.batch_tokens)

    def fingerprint(self) -> str:
        """What the model *is*, for caches and indexes that must not mix two models' vectors.

        Two models with the same fingerprint give the same vectors; the name plays no part
        where the weights can be seen (the same ``--model tiny`` in two folders differs). This
        default hashes backend, name, dimensions, dtype and quantization from :meth:`info`:
        right for remote APIs, whose weights are invisible. Local backends override it with a
        hash of their files (:func:`fingerprint_files`).
        """
        i = self.info()
        return fingerprint_of({"backend": i.backend, "name": i.name, "dimensions": i.dimensions,
                               "dtype": i.dtype, "quantization": i.quantization})

    def token_level(self) -> TokenLevel | None:
        """The token-id interface when the backend has one (the local engine), else None."""
        return None

    def text_tokens(self) -> TextTokens | None:
        """The model's tokenizer as chunkers need it (offsets, counts), None where the backend
        has none (a remote API of unknown tokenizer): chunkers then approximate."""
        return None

    def usage_report(self) -> str | None:
        """A line on what was spent (paid APIs: tokens, requests, cost), None when nothing is."""
        return None

    def usage_counts(self) -> dict[str, Any] | None:
        """What was spent as plain totals (paid APIs: the fields of
        :class:`smysl.providers.usage.Usage` and ``cost``), None when nothing is."""
        return None

    @abc.abstractmethod
    def _embed(
        self, texts: list[str], *, truncate: bool, progress: Progress | None = None
    ) -> np.ndarray:
        """Embed already formatted texts: float32 ``[len(texts), self.dimensions]`` in input order.

        Rows need not be normalised. Over-long input raises ``ValueError`` unless ``truncate``.
        """

    # ----------------------------------------------------------------- derived API
    def embed(
        self,
        texts: str | Sequence[str],
        *,
        instruction: str | None = None,
        dimensions: int | None = None,
        truncate: bool = False,
        progress: bool | Progress = False,
    ) -> np.ndarray:
        """Embed texts; returns float32 ``[n, dimensions]`` with unit rows, in input order.

        ``instruction`` (a task description, or a preset name from
        :data:`smysl.prompts.TASK_PRESETS`) turns every text into a query; without it texts are
        embedded as documents.
        """
        items = self._check_texts(texts)
        truncate = check_flag(truncate, "truncate")
        check_progress(progress)
        if not items:  # before self.dimensions, which a remote server may answer only for a fee
            return np.zeros((0, self._empty_width(dimensions)), dtype=np.float32)
        # A remote server's unknown width, not needed to check a size, is learned within the
        # call (its probe under the call's deadline, its failure the call's)
        dims = (None if dimensions is None and self.known_dimensions() is None else
                self.check_dimensions(dimensions))
        formatted = self.format_texts(items, instruction)
        if truncate:  # the template ends with the text: what it put before is the query's head
            self._check_room(formatted[0][:len(formatted[0]) - len(items[0])])
        with progress_bar(progress, len(items)) as bar:
            raw = self.embed_formatted(formatted, truncate=truncate, progress=bar)
        return finish(raw, raw.shape[1] if dims is None else dims)

    def embed_queries(
        self,
        texts: str | Sequence[str],
        task: str | None = None,
        *,
        dimensions: int | None = None,
        truncate: bool = False,
        progress: bool | Progress = False,
    ) -> np.ndarray:
        """Embed search queries with ``task`` (default: :attr:`default_task`)."""
        return self.embed(
            texts,
            instruction=self.choose_instruction(task, role="query"),
            dimensions=dimensions,
            truncate=truncate,
            progress=progress,
        )

    def embed_documents(
        self,
        texts: str | Sequence[str],
        *,
        dimensions: int | None = None,
        truncate: bool = False,
        progress: bool | Progress = False,
    ) -> np.ndarray:
        """Embed documents (no instruction)."""
        return self.embed(texts, dimensions=dimensions, truncate=truncate, progress=progress)

    def _check_room(self, head: str) -> None:
        """:class:`~smysl.tokenize.InputTooLongError` when truncation would keep nothing of a
        query but its instruction (``head``, the template before the text; "" for documents):
        every query's vector would be the instruction's. Backends that cannot count are not
        checked."""
        if not head or self.max_tokens is None:
            return
        try:
            with_head, bare = self.count_tokens([head, ""])
        except NotImplementedError:
            return
        if fills(with_head - bare, self.max_tokens):
            raise InputTooLongError(index=0, tokens=with_head, limit=self.max_tokens,
                                    head=with_head - bare)

    def embed_formatted(self, texts: list[str], *, truncate: bool,
                        progress: Progress | None = None) -> np.ndarray:
        """Raw rows ``[len(texts), dimensions]`` of already formatted texts (not normalised):
        :meth:`_embed` with its shape checked. The server's batcher calls it on many requests'
        texts at once and post-processes each request's rows with :func:`smysl.pooling.finish`."""
        raw = np.asarray(self._embed(texts, truncate=truncate, progress=progress),
                         dtype=np.float32)
        if raw.shape != (len(texts), self.dimensions):
            raise RuntimeError(f"backend returned shape {raw.shape}, "
                               f"expected {(len(texts), self.dimensions)}")
        return raw

    def check_dimensions(self, dimensions: int | None) -> int:
        """The width a call asking for ``dimensions`` returns: ``dimensions`` checked against
        :attr:`min_dimensions` .. :attr:`dimensions` (ValueError saying the range), or the
        native width for None."""
        return check_dimensions(dimensions, self.dimensions, minimum=self.min_dimensions)

    def known_dimensions(self) -> int | None:
        """:attr:`dimensions` where knowing it costs nothing; None where only a (billed) request
        would tell (a remote server of unknown width). Local backends always know it."""
        return self.dimensions

    def _empty_width(self, dimensions: int | None) -> int:
        """Width of what ``embed`` returns for no texts: the size asked for, else the native
        width, checked as any call's where the width is known. Where it is not, no request is
        sent to learn it: the size asked for is taken as given, and without one the rows are
        0 wide (there are none)."""
        native = self.known_dimensions()
        if native is not None:
            return check_dimensions(dimensions, native, minimum=self.min_dimensions)
        if dimensions is None:
            return 0
        n = positive_int(dimensions)
        if n is None:
            raise ValueError(f"dimensions must be a positive integer, got {dimensions!r}")
        if n < self.min_dimensions:  # known without the width (an adapter checks it when made)
            raise ValueError(f"dimensions must be at least {self.min_dimensions} for this "
                             f"model, got {n}")
        return n

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Tokens each text costs as a document, EOS included (backends with a tokenizer)."""
        raise NotImplementedError(f"{type(self).__name__} cannot count tokens")

    def choose_instruction(self, instruction: str | None = None, *, role: Role | None = None,
                           default: str | None = None) -> str | None:
        """The one rule for which instruction texts are embedded with (None: as documents).

        - ``role="document"``: none; an instruction as well is a contradiction (``ValueError``).
        - an explicit ``instruction``: that one, a preset name expanded; ``""`` means none. A
          model that takes no instructions rejects it (``ValueError``).
        - otherwise ``role="query"``: ``default`` (a task, e.g. a toolkit preset) or the
          model's :attr:`default_task`, on instruction-aware models only; no role: none.
        """
        if role not in (None, "query", "document"):
            raise ValueError(f"role must be 'query' or 'document', got {role!r}")
        if instruction is not None:
            # a lone surrogate reached the tokenizer's own TypeError (texts get this check)
            check_unicode(instruction if isinstance(instruction, str) else None,
                          "the instruction")
            task = resolve_task(instruction)
            if task is not None and role == "document":
                raise ValueError("an instruction makes the inputs queries; drop it or embed "
                                 "them as queries")
            if task is not None and not self.instruction_aware:
                raise ValueError(f"model {self.name!r} does not take instructions")
            return task
        if role != "query" or not self.instruction_aware:
            return None
        return resolve_task(default if default is not None else self.default_task)

    def format_texts(self, texts: list[str], instruction: str | None) -> list[str]:
        """Apply the query template when an instruction is given (instruction-aware models)."""
        task = self.choose_instruction(instruction)
        if task is None:
            return texts
        return [format_query(t, task) for t in texts]

    def share(self) -> BaseEmbedder:
        """A picklable twin that other processes embed with, computing on this embedder's
        backend (the HTTP workers of ``smysl serve --workers``); closing it leaves this one
        running. NotImplementedError for backends that cannot be shared."""
        raise NotImplementedError(f"{type(self).__name__} cannot be shared with other processes "
                                  "(a local model whose engine runs in a child process can)")

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for most backends
        """Release resources (connections, device memory). Safe to call twice."""

    def __enter__(self) -> BaseEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_texts(texts: str | Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            return [texts]
        if (isinstance(texts, bytes | bytearray) or not isinstance(texts, Sequence | np.ndarray)
                or (isinstance(texts, np.ndarray) and texts.ndim != 1)):
            what = (f"a {texts.ndim}-d array" if isinstance(texts, np.ndarray)
                    else str(type(texts)))
            raise ValueError(f"texts must be a string or a sequence of strings, got {what}")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] must be a string, got {type(t).__name__}")
            check_unicode(t, f"texts[{i}]")
        return items


def check_flag(value: object, name: str) -> bool:
    """``value`` when it is True or False (numpy's too), else a ValueError naming ``name``:
    ``bool("no")`` is True, and ``truncate="no"`` cut texts a caller had asked to keep whole."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def check_progress(progress: object) -> None:
    """A ``progress`` argument: True, False (None) or a tqdm-like object with ``update``; any
    other value failed with an AttributeError after the work was done."""
    if progress is None or isinstance(progress, bool | Progress):
        return
    raise ValueError(f"progress must be True, False or an object with tqdm's update(n), "
                     f"got {progress!r}")


def positive_int(value: object) -> int | None:
    """``value`` as an int >= 1 if it is one (an int or numpy integer; not a bool, float or
    string, which ``int()`` would turn into some other count), else None. Callers word the
    error for their own parameter."""
    if isinstance(value, bool):
        return None
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None
    return n if n >= 1 else None


#: Bytes hashed per window of a large file: three windows (start, middle, end) stand in for
#: the file, so a 16 GB checkpoint costs 3 MiB of reading.
FINGERPRINT_WINDOW = 1 << 20


def fingerprint_of(fields: dict[str, Any]) -> str:
    """A short stable hash (hex) of JSON-able ``fields``."""
    data = json.dumps(fields, sort_keys=True, ensure_ascii=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:32]


def fingerprint_files(files: Iterable[Path], fields: dict[str, Any] | None = None) -> str:
    """:func:`fingerprint_of` ``fields`` plus each file's name, size and the SHA-256 of up to
    three fixed :data:`FINGERPRINT_WINDOW` windows (start, middle, end; small files whole)."""
    listed = []
    for f in sorted(Path(p) for p in files):
        size = f.stat().st_size
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            if size <= 3 * FINGERPRINT_WINDOW:
                h.update(fh.read())
            else:
                for at in (0, (size - FINGERPRINT_WINDOW) // 2, size - FINGERPRINT_WINDOW):
                    fh.seek(at)
                    h.update(fh.read(FINGERPRINT_WINDOW))
        listed.append([f.name, size, h.hexdigest()])
    return fingerprint_of({**(fields or {}), "files": listed})


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(progress: bool | Progress, total: int) -> Any:
    """A context manager with ``update(n)`` for an ``embed`` call's ``progress`` argument
    (checked by :func:`check_progress`): a tqdm bar of ``total`` texts for True, the caller's
    object for one, else nothing."""
    if progress is False or progress is None:
        return _NullBar()
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="text", desc="embedding", smoothing=0.1)
    bar = progress

    class _Wrap(_NullBar):
        def update(self, n: int = 1) -> None:
            bar.update(n)

    return _Wrap()
