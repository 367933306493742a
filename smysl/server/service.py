"""What every API route shares: model-name resolution, input validation, token accounting, and the
hand-off to the batcher. Routes only translate their wire format to and from these calls.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import numpy as np

from smysl import tokenize
from smysl.base import BaseEmbedder, ModelInfo, Role, TokenLevel, UpstreamError
from smysl.pooling import NonFiniteError
from smysl.registry import names_of, refers_to
from smysl.server.batcher import INLINE_SIZE, BackendDown, Batcher, EmbedBackend, Job, Slot
from smysl.server.config import ServerConfig
from smysl.server.errors import ApiError, upstream_failed
from smysl.server.health import BackendHealth
from smysl.server.metrics import Metrics
from smysl.shown import shown_source
from smysl.tokenize import Direction, InputTooLongError, check_counts, cut_to_tokens

_T = TypeVar("_T")

#: Completes when the request's client has gone (see :func:`until_disconnected`).
Disconnected = Callable[[], Awaitable[object]]

log = logging.getLogger("smysl.server")

#: Texts with more characters than this per token of ``max_request_tokens`` are refused before
#: tokenisation (real text runs 2-5 characters per Qwen3 token): tokenising a 15 MB body
#: would take seconds and over a gigabyte only to refuse it.
CHARS_PER_TOKEN = 8


def check_unicode(value: str | None, what: str, *, param: str | None = None) -> None:
    """400 for a string that is not valid Unicode (a lone surrogate from JSON ``"\\ud800"``:
    :func:`smysl.tokenize.check_unicode`)."""
    try:
        tokenize.check_unicode(value, what)
    except ValueError as e:
        raise ApiError("invalid", str(e), param=param or what) from None


def until_disconnected(receive: Callable[[], Awaitable[Mapping[str, Any]]]) -> Disconnected:
    """A waiter on an ASGI ``receive`` whose body was read already: the next message it yields
    is ``http.disconnect``, when the client goes (Starlette's streaming responses listen the same
    way). The batcher runs it beside a queued job, so dropping a gone client costs the compute
    thread one flag read instead of a round trip through the event loop."""

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return wait


def split_inputs(inp: object, what: str = "input") -> tuple[list[str] | None, list[list[int]]]:
    """A request's inputs in OpenAI's (and TEI's) four forms -> (texts, []) or (None, token-id
    lists): a string, a list of strings, a list of token ids, a list of token-id lists."""
    if isinstance(inp, str):
        return [inp], []
    items = list(inp) if isinstance(inp, list) else []
    if isinstance(inp, list) and not items:  # text as far as anyone can tell: "not empty"
        return [], []
    if items and all(isinstance(x, str) for x in items):
        return [str(x) for x in items], []
    if items and all(isinstance(x, int) for x in items):
        return None, [[int(x) for x in items]]
    if all(isinstance(x, list) for x in items):
        return None, [[int(t) for t in x] for x in items]
    raise ApiError("invalid", f"{what} must be a string, a list of strings, a list of token "
                   "ids or a list of token-id lists (not texts and token ids in one request)",
                   param=what)


def part_name(what: str, first: int | None, n: int) -> str:
    """A request's field, or the piece of it starting at ``first`` (``input[21]``,
    ``input[8..11]``; :meth:`Service.pieces`; None: the whole request), for messages."""
    if first is None:
        return what
    return f"{what}[{first}]" if n == 1 else f"{what}[{first}..{first + n - 1}]"


@dataclass(frozen=True)
class Embedded:
    """Vectors of one request plus what the response headers and usage fields report."""

    vectors: np.ndarray
    tokens: int
    queue_s: float
    compute_s: float
    total_s: float

    @staticmethod
    def joined(parts: Sequence[Embedded], total_s: float) -> Embedded:
        """The pieces of one request (:meth:`Service.pieces`) as its one answer."""
        if len(parts) == 1:
            return parts[0]
        return Embedded(np.concatenate([p.vectors for p in parts]),
                        sum(p.tokens for p in parts), sum(p.queue_s for p in parts),
                        sum(p.compute_s for p in parts), total_s)


#: The headers :meth:`Service.timing_headers` adds to an embedding response.
TIMING_HEADERS = ("x-queue-time", "x-compute-time", "x-total-time", "x-compute-tokens",
                  "x-queue-depth")


class Service:
    """The loaded model behind all three APIs."""

    def __init__(self, embedder: BaseEmbedder, config: ServerConfig, metrics: Metrics) -> None:
        self.embedder = embedder
        self.config = config
        #: The backend's token-id interface (our engine), else None: with one, the server
        #: tokenises each request once, on arrival, and any requests share a batch whatever
        #: their options.
        self.tokens = embedder.token_level()
        self.metrics = metrics
        budget = config.max_batch_tokens or embedder.batch_tokens or 8192
        wait_ms = config.max_wait_ms
        if wait_ms is None:
            wait_ms = 0.0 if (embedder.info().device or "").startswith("cuda") else 2.0
        self.batcher = Batcher(EmbedBackend(embedder), metrics, max_batch_tokens=budget,
                               max_batch_requests=config.max_batch_requests,
                               max_wait_s=wait_ms / 1000,
                               max_queue=config.max_queue)
        #: The name the server reports; clients may send any of :attr:`names`.
        self.model_id = config.served_name or embedder.name
        self.names = self._accepted_names()
        self.started = time.time()
        #: Tokenising large requests off the event loop, at most two at a time: a burst of large
        #: requests in dozens of threads starved the compute thread of the GIL (and the CPU).
        self.tokenizers = anyio.CapacityLimiter(2)
        self.health = BackendHealth(f"the model backend of {self.model_id!r}",
                                    lambda: embedder.healthy, metrics.backend,
                                    remote=embedder.remote,
                                    unhealthy_exit_s=config.unhealthy_exit_s)
        if config.default_dimensions is not None:
            embedder.check_dimensions(config.default_dimensions)

    # ------------------------------------------------------------------ names
    def _accepted_names(self) -> set[str]:
        # the --model string too, as typed (st:all-minilm-l6-v2 was a 404 while the backend's
        # name, all-minilm-l6-v2, was served): a client configured as the server was works
        source = self.embedder.source
        return (names_of(self.embedder.name) | names_of(self.model_id)
                | (names_of(shown_source(source)) if source else set()))

    def info(self) -> ModelInfo:
        """The served model's :class:`~smysl.base.ModelInfo` (under the served name)."""
        return dataclasses.replace(self.embedder.info(), name=self.model_id)

    def resolve_model(self, name: str | None) -> str:
        """The served model's id when ``name`` refers to it (or is absent); else 404."""
        if name is None or not name.strip():
            return self.model_id
        if refers_to(name, self.names):
            return self.model_id
        # the served name's own (a local folder's path answers too, but --served-name hides it)
        raise ApiError("not_found", f"model {name!r} is not served here; this server serves "
                       f"{self.model_id!r} (also known as {sorted(names_of(self.model_id))})",
                       param="model")

    # ------------------------------------------------------------------ instructions
    def instruction(self, instruction: str | None, input_type: str | None) -> str | None:
        """Query instruction from the extensions: an instruction or preset, or input_type (the
        rule itself is :meth:`~smysl.base.BaseEmbedder.choose_instruction`)."""
        kind = (input_type or "").strip().lower() or None
        if kind not in (None, "query", "document", "passage"):
            raise ApiError("invalid", f"input_type must be 'query' or 'document', got "
                           f"{input_type!r}", param="input_type")
        role: Role | None = "document" if kind == "passage" else kind  # type: ignore[assignment]
        check_unicode(instruction, "instruction")
        if instruction is not None and not instruction.strip():
            instruction = None  # an empty extension field is an absent one
        try:
            return self.embedder.choose_instruction(instruction, role=role)
        except ValueError as e:
            kind = "invalid" if self.embedder.instruction_aware else "unsupported"
            raise ApiError(kind, str(e), param="instruction") from None

    def dimensions(self, requested: int | None) -> int:
        dims = requested if requested is not None else self.config.default_dimensions
        try:
            return self.embedder.check_dimensions(dims)
        except ValueError as e:
            raise ApiError("invalid", str(e), param="dimensions") from None

    # ------------------------------------------------------------------ validation
    def check_count(self, n: int, what: str = "input") -> None:
        if n == 0:
            raise ApiError("empty", f"{what} must not be empty; send at least one text",
                           param=what)
        if n > self.config.max_inputs:
            raise ApiError("too_many", f"{what} has {n} items but at most "
                           f"{self.config.max_inputs} are allowed per request; split it",
                           param=what)

    def check_texts(self, texts: Sequence[str], what: str = "input", *,
                    empty_ok: bool = False, first: int | None = None) -> None:
        """Count, Unicode and size of a request's texts; an empty text is refused unless
        ``empty_ok`` (a route that only shows tokens) or ``allow_empty``. ``first``: the
        index of ``texts[0]`` in the request when they are a piece of it
        (:meth:`pieces`), for messages; None: the whole request."""
        self.check_count(len(texts), what)
        for i, t in enumerate(texts, first or 0):
            if t == "" and not (empty_ok or self.config.allow_empty):
                raise ApiError("empty", f"{what}[{i}] is an empty string; remove it or send "
                               "text (this server rejects empty inputs, see docs/server.md)",
                               param=what)
            check_unicode(t, f"{what}[{i}]", param=what)
        chars = sum(map(len, texts))
        cap = self.config.max_request_tokens
        if chars > CHARS_PER_TOKEN * cap:
            what = part_name(what, first, len(texts))
            raise ApiError("too_many", f"{what} has {chars} characters, more than this server "
                           f"tokenises per request ({CHARS_PER_TOKEN} per token of its limit "
                           f"of {cap} tokens, max_request_tokens); split it", param=what)

    def pieces(self, texts: Sequence[str], instruction: str | None) -> list[slice]:
        """A request of any size as consecutive pieces within ``max_inputs`` and
        ``max_request_tokens``, each to be embedded as a request of its own (its own place in
        the queue and time budget, tokenised on its own: memory stays bounded). For Ollama's
        routes: its clients (langchain-ollama, ollama-python, litellm) send a whole corpus in
        one call, and Ollama has no per-request cap. A text costs at most its formatted UTF-8
        bytes (its own and the instruction's template, the same for every text) and two special
        tokens; one text is always a piece, held to the limits as any request's is."""
        try:  # the template's bytes once, not every text formatted here and again when embedded
            template = len(self.embedder.format_texts([""], instruction)[0].encode())
        except ValueError:  # refused as any request's is, by embed_texts
            return [slice(0, len(texts))]
        cap, most = self.config.max_request_tokens, self.config.max_inputs
        out: list[slice] = []
        start = size = 0
        for i, t in enumerate(texts):
            cost = len(t.encode("utf-8", "surrogatepass")) + template + 2
            if i > start and (i - start >= most or size + cost > cap):
                out.append(slice(start, i))
                start, size = i, 0
            size += cost
        out.append(slice(start, len(texts)))
        return out

    def check_tokens(self, lengths: Sequence[int], what: str = "input",
                     first: int | None = None) -> None:
        """The per-request token cap (``max_request_tokens``), counted after truncation."""
        total, cap = sum(lengths), self.config.max_request_tokens
        if total > cap:
            what = part_name(what, first, len(lengths))
            raise ApiError("too_many", f"{what} has {total} tokens but at most {cap} are "
                           "allowed per request (max_request_tokens); split it", param=what)

    # ------------------------------------------------------------------ embedding
    async def _count_tokens(self, texts: list[str], slot: Slot) -> list[int] | None:
        """Tokens per formatted text, or None when the backend cannot count."""
        try:
            return list(await self._off_loop(lambda: self.embedder.count_tokens(texts),
                                             sum(map(len, texts)), slot))
        except NotImplementedError:
            return None

    async def embed_texts(self, texts: list[str], *, instruction: str | None, dimensions: int,
                          truncate: bool, normalize: bool = True, direction: Direction = "right",
                          disconnected: Disconnected | None = None,
                          what: str = "input", context: tuple[str, int] | None = None,
                          first: int | None = None) -> Embedded:
        """Embed texts (already validated with :meth:`check_texts`). ``context``: a request's
        own token limit below the model's, and its name (Ollama's ``options.num_ctx``), held
        to as the model's is (refused, or truncated with ``truncate``); backends without a
        tokenizer cannot count, and take the model's. ``first``: as :meth:`check_texts`'s; a
        piece past the first keeps the request's place in the queue."""
        # a full queue answers 429 before any tokenising, and the request holds its place
        # while it is tokenised
        with self.batcher.admitted(continuing=bool(first)) as slot:
            return await self._embed_texts(slot, texts, instruction, dimensions, truncate,
                                           normalize, direction, disconnected, what, context,
                                           first)

    async def _embed_texts(self, slot: Slot, texts: list[str], instruction: str | None,
                           dimensions: int, truncate: bool, normalize: bool,
                           direction: Direction, disconnected: Disconnected | None,
                           what: str, context: tuple[str, int] | None,
                           first: int | None) -> Embedded:
        t0 = time.perf_counter()
        try:
            formatted = self.embedder.format_texts(texts, instruction)
        except ValueError as e:
            raise ApiError("invalid", str(e), param="instruction") from None
        if self.tokens is not None:
            # the query template's head (none for documents), which truncation keeps: what
            # formatting put before the text (the template ends with it)
            head = len(formatted[0]) - len(texts[0]) if texts else 0
            ids = await self._tokenize(self.tokens, formatted, truncate, direction, what, slot,
                                       first, context, head)
            lengths = [len(x) for x in ids]
            self.check_tokens(lengths, what, first)
            job = Job(key=("ids",), items=ids, lengths=lengths, dimensions=dimensions,
                      normalize=normalize, disconnected=disconnected,
                      timeout_s=self.config.request_timeout_s)
            vectors = await self._submit(job, slot, what, first)
            return Embedded(vectors, sum(lengths), job.queue_s, job.compute_s,
                            time.perf_counter() - t0)
        counts = await self._count_tokens(formatted, slot)
        limit = self.embedder.max_tokens
        if (counts is not None and context is not None and not self.embedder.remote
                and (limit is None or context[1] < limit)):
            # a request's own limit on a local backend that cuts texts to its own
            # (sentence-transformers: num_ctx 8 was taken as 100,000): refused, or the texts
            # cut to it here. (A remote one takes its limit: docs/server.md)
            formatted, counts = await self._cut_to_context(
                formatted, counts, context, truncate, direction,
                len(formatted[0]) - len(texts[0]), what, first, slot)
        if counts is not None and limit is not None:
            if not truncate:
                try:
                    check_counts(counts, limit)
                except InputTooLongError as e:
                    raise self._too_long(what, e, first) from None
            if direction == "left" and max(counts, default=0) > limit:
                raise self._right_only()
            lengths = [min(c, limit) for c in counts]
        elif counts is not None:
            lengths = counts
        else:  # a rough budget estimate for backends without a tokenizer
            lengths = [len(t) // 3 + 1 for t in formatted]
        if counts is not None:
            self.check_tokens(lengths, what, first)
        job = Job(key=("text", truncate), items=formatted, lengths=lengths,
                  dimensions=dimensions, normalize=normalize, disconnected=disconnected,
                  timeout_s=self.config.request_timeout_s)
        vectors = await self._submit(job, slot, what, first)
        return Embedded(vectors, sum(lengths) if counts is not None else 0, job.queue_s,
                        job.compute_s, time.perf_counter() - t0)

    async def _tokenize(self, tokens: TokenLevel, texts: list[str], truncate: bool,
                        direction: Direction, what: str, slot: Slot,
                        first: int | None = None, context: tuple[str, int] | None = None,
                        head: int = 0) -> list[list[int]]:
        """Token ids as embedded (EOS last, truncated as asked); long requests off the loop.
        ``context``: a request's own limit and its name, held to where below the model's;
        ``head``: each text's leading characters that truncation keeps (a query's template)."""
        model = self.embedder.max_tokens
        own = (context if context is not None and (model is None or context[1] < model)
               else None)

        def run() -> list[list[int]]:
            return tokens.tokenize(texts, truncate=truncate, direction=direction,
                                   max_tokens=own[1] if own else None, head_chars=head)

        try:
            return await self._off_loop(run, sum(map(len, texts)), slot)
        except InputTooLongError as e:
            if own is not None:  # the error names the request's limit
                e = e.but(who=own[0])
            raise self._too_long(what, e, first) from None

    async def tokenizer_work(self, run: Callable[[], _T], size: int) -> _T:
        """``run()`` for a route that only tokenises or decodes (TEI ``/tokenize``,
        ``/decode``): a small request inline; a large one takes a place in the queue as an
        embedding request does (429 when full: they took the tokenizer threads with no bound,
        and large embedding requests waited behind them for 33 s) and waits for a tokenizer
        thread within the time budget."""
        if size <= INLINE_SIZE:  # no place in the queue taken: answered at once
            return run()
        with self.batcher.admitted() as slot:
            return await self._off_loop(run, size, slot)

    async def _cut_to_context(self, formatted: list[str], counts: list[int],
                              context: tuple[str, int], truncate: bool,
                              direction: Direction, head: int, what: str, first: int | None,
                              slot: Slot) -> tuple[list[str], list[int]]:
        """``formatted`` (their ``counts``) within a request's own limit ``context`` for a
        backend without token-level input: over-long ones refused, or with ``truncate`` cut
        at a token's end by the backend's own tokenizer (:func:`cut_to_tokens`), keeping the
        ``head`` characters a query's template put first."""
        name, most = context
        try:
            check_counts(counts, most, who=name)
            return formatted, counts
        except InputTooLongError as e:
            if not truncate:
                raise self._too_long(what, e, first) from None
        if direction == "left":  # cut_to_tokens keeps a text's beginning
            raise self._right_only()
        tokens = self.embedder.text_tokens()
        if tokens is None:  # no offsets (a slow tokenizer): it cannot be cut to num_ctx
            raise ApiError("too_long", f"model {self.model_id!r} cannot cut its inputs to "
                           f"{name} ({most} tokens): shorten them or leave {name} out",
                           param=what)
        over = [i for i, c in enumerate(counts) if c > most]

        def cut() -> list[tuple[str, int] | None]:
            return [cut_to_tokens(formatted[i], most, tokens) for i in over]

        out, kept = list(formatted), list(counts)
        for i, fit in zip(over, await self._off_loop(cut, sum(len(formatted[i]) for i in over),
                                                     slot), strict=True):
            if fit is None or len(fit[0]) <= head:  # the prompt's vector alone, or nothing
                beside = " beside the prompt put before it" if head else ""
                raise ApiError("too_long", f"{what}[{(first or 0) + i}]: {name} {most} keeps "
                               f"no token of its text{beside}; use a larger {name}",
                               param=what)
            out[i], kept[i] = fit
        return out, kept

    async def _off_loop(self, run: Callable[[], _T], size: int, slot: Slot) -> _T:
        """``run()`` inline or in a tokenizer thread (:meth:`Batcher.prepare`)."""
        return await self.batcher.prepare(run, size, self.tokenizers, slot,
                                          self.config.request_timeout_s)

    def _right_only(self) -> ApiError:
        """A backend that takes texts cuts their end only (its own truncation, or ours)."""
        return ApiError("unsupported", f"model {self.model_id!r} can only truncate on the "
                        "right; use truncation_direction 'right'", param="truncation_direction")

    @staticmethod
    def _too_long(what: str, e: InputTooLongError, first: int | None = None) -> ApiError:
        return ApiError("too_long", e.describe(f"{what}[{(first or 0) + e.index}]"),
                        param=what)

    async def embed_ids(self, ids: list[list[int]], *, dimensions: int, truncate: bool,
                        normalize: bool = True, direction: Direction = "right",
                        disconnected: Disconnected | None = None,
                        what: str = "input") -> Embedded:
        """Embed pre-tokenised inputs (token-level backends only, see :attr:`tokens`)."""
        t0 = time.perf_counter()
        if not self.config.token_ids:
            raise ApiError("invalid", "token-id input is off on this server: an OpenAI "
                           "client's ids are tiktoken's, not this model's, and would embed a "
                           "garbled text; send the text (LangChain's OpenAIEmbeddings: "
                           "check_embedding_ctx_length=False), or start the server with "
                           "--token-ids if these are the model's own ids", param=what)
        with self.batcher.admitted() as slot:  # its place held while ids are checked
            return await self._embed_ids(slot, t0, ids, dimensions, truncate, normalize,
                                         direction, disconnected, what)

    async def _embed_ids(self, slot: Slot, t0: float, ids: list[list[int]], dimensions: int,
                         truncate: bool, normalize: bool, direction: Direction,
                         disconnected: Disconnected | None, what: str) -> Embedded:
        if self.tokens is None:
            raise ApiError("unsupported", f"model {self.model_id!r} takes text only; send "
                           "strings instead of token ids", param=what)
        self.check_count(len(ids), what)
        for i, seq in enumerate(ids):
            if not seq:
                raise ApiError("empty", f"{what}[{i}] is an empty token list", param=what)
        # the cap counts what is embedded: an input ``truncate`` cuts to the model's limit
        # counts that many (checked again below, once EOS is added)
        limit = self.embedder.max_tokens if truncate else None
        self.check_tokens([len(x) if limit is None else min(len(x), limit) for x in ids], what)
        tokens = self.tokens

        def prepare() -> list[list[int]]:
            return tokens.prepare_token_ids(ids, truncate=truncate, direction=direction)

        try:
            seqs = await self._off_loop(prepare, sum(map(len, ids)), slot)
        except InputTooLongError as e:
            raise self._too_long(what, e) from None
        except ValueError as e:
            raise ApiError("invalid", str(e), param=what) from None
        lengths = [len(x) for x in seqs]
        self.check_tokens(lengths, what)  # EOS may have been added
        job = Job(key=("ids",), items=seqs, lengths=lengths, dimensions=dimensions,
                  normalize=normalize, disconnected=disconnected,
                  timeout_s=self.config.request_timeout_s)
        vectors = await self._submit(job, slot, what)
        # what was embedded, as for text: ids cut off by ``truncate`` are not counted, an EOS
        # appended is (the same text as ids without EOS counted one less, and the compute
        # header said so too)
        return Embedded(vectors, sum(lengths), job.queue_s, job.compute_s,
                        time.perf_counter() - t0)

    async def decode(self, ids: list[list[int]], *, skip_special_tokens: bool,
                     what: str = "ids") -> list[str]:
        """The text of each token-id list (token-level backends only); long requests off the
        loop, as tokenising is."""
        tokens = self.tokens
        if tokens is None:
            raise ApiError("not_implemented",
                           f"model {self.model_id!r} has no local tokenizer to decode with")
        self.check_count(len(ids), what)
        self.check_tokens([len(x) for x in ids], what)

        def run() -> list[str]:
            return tokens.decode(ids, skip_special_tokens=skip_special_tokens)

        try:
            return await self.tokenizer_work(run, sum(map(len, ids)))
        except ValueError as e:
            raise ApiError("invalid", str(e), param=what) from None

    async def _submit(self, job: Job, slot: Slot, what: str = "input",
                      first: int | None = None) -> np.ndarray:
        try:
            return await self.batcher.submit(job, slot)  # finite rows (finish() checks them)
        except NonFiniteError as e:  # the model's failure on this input: never null or NaN
            raise ApiError("internal", f"model {self.model_id!r}: {e}") from None
        except InputTooLongError as e:
            raise self._too_long(what, e, first) from None
        except ValueError as e:  # the backend's contract: ValueError means bad input
            raise ApiError("invalid", str(e), param=what) from None
        except ApiError:
            raise
        except BackendDown:
            raise self.health.unavailable() from None
        except UpstreamError as e:
            raise upstream_failed(self.model_id, e) from None
        except Exception:
            if not self.embedder.healthy:
                raise self.health.unavailable() from None
            raise

    def timing_headers(self, e: Embedded) -> dict[str, str]:
        """TEI's timing headers (milliseconds), which any client may read
        (:data:`TIMING_HEADERS`)."""
        return {
            "x-queue-time": f"{e.queue_s * 1000:.3f}",
            "x-compute-time": f"{e.compute_s * 1000:.3f}",
            "x-total-time": f"{e.total_s * 1000:.3f}",
            "x-compute-tokens": str(e.tokens),
            "x-queue-depth": str(self.batcher.depth),
        }
