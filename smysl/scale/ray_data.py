"""Embedding on a Ray cluster: an actor pool with one loaded model per actor.

Two ways in, one actor:

- :class:`RayEmbedder` is a :class:`~smysl.base.BaseEmbedder` whose ``embed`` splits each call
  over the pool; :func:`~smysl.scale.job.run_job` (``smysl embed --ray``) uses it, so a
  cluster job keeps the job's shards, resumption and exactly-once writes. Actors are restarted
  when they die and their part of a call redone (Ray's ``max_restarts`` /
  ``max_task_retries``), :data:`TASK_RETRIES` times; then the call fails naming the part.
- :func:`embed_dataset` maps a ``ray.data.Dataset`` of (id, text) rows to (id, vector,
  dimensions, model, tokens) rows with ``map_batches`` over an actor pool.

Every actor loads the model with :func:`smysl.load` from its string (and a backend's own
options), so any backend works, providers included: each actor applies the provider's
concurrency and retry limits, and returns the usage of each call with its vectors, which
:class:`RayEmbedder` sums (``usage``, ``usage_report``). Nothing else in smysl imports Ray.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smysl.base import BaseEmbedder, Progress, check_flag, check_progress, progress_bar
from smysl.options import ModelOptions
from smysl.pooling import finish
from smysl.prompts import resolve_task
from smysl.providers.errors import RejectedInputError
from smysl.registry import portable_model
from smysl.rows import missing
from smysl.scale.sources import to_row
from smysl.shown import first_line
from smysl.tokenize import InputTooLongError, TextTokens

INSTALL_HINT = "pip install 'smysl[ray]'"


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the actor pool runs.

    Attributes:
        address: A running cluster (``HOST:PORT``, ``auto``, ``ray://...``); None uses
            ``$RAY_ADDRESS`` or starts a local cluster.
        actors: Actors in the pool (one loaded model each).
        num_gpus: GPUs per actor (1 for one model per GPU; 0 on CPU).
        num_cpus: CPUs reserved per actor.
    """

    address: str | None = None
    actors: int = 2
    num_gpus: float = 0.0
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")


def _ray() -> Any:
    try:
        import ray
        import ray.data  # embed_dataset's actor-pool strategy lives here
    except ImportError as e:
        raise ImportError(f"embedding on Ray needs ray[data]: {INSTALL_HINT}") from e
    return ray


#: The cluster this process is connected to is a local one that :func:`connect` started (its
#: driver holds it: it never grows); kept for later calls, which find Ray initialised.
_started: dict[str, Any] = {"cluster": None}


def connect(config: RayConfig) -> tuple[Any, bool]:
    """``ray.init`` on the configured cluster (``$RAY_ADDRESS`` without an address, else this
    machine's running one, else a new local one); a clear error naming the address when it
    cannot be reached. Returns (the ``ray`` module, whether the cluster is a new local one
    started by this process: one that cannot grow, so a pool it cannot hold waits for
    ever)."""
    ray = _ray()
    if ray.is_initialized():
        # the cluster smysl started (a later RayEmbedder in the process), or the caller's own
        ours = _started["cluster"] is not None and _started["cluster"] == _session(ray)
        return ray, ours
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    given = bool(config.address) or not address
    where = address if given else f"{address} (from $RAY_ADDRESS)"
    problem = _malformed(address)
    if problem is None and (silent := _unreachable(address)) is not None:
        # ray.init itself retries an absent cluster for minutes
        instead = "omit the address" if given else "unset $RAY_ADDRESS"
        problem = f"{silent}; start one (ray start --head) or {instead} for a local one"
    if problem is not None:
        raise ValueError(f"cannot connect to the Ray cluster at {where}: {problem}")
    started = address == "local"  # always a new one
    try:
        if address is None:  # this machine's `ray start` cluster if there is one (fast)
            try:
                ray.init(address="auto", include_dashboard=False, log_to_driver=False)
            except ConnectionError:  # none: a new one, of this machine's CPUs
                where = "a new local one"
                ray.init(include_dashboard=False, log_to_driver=False)
                started = True
        else:
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        # a cluster that answers and refuses (an auth token, another Ray version): its reason
        raise ValueError(f"cannot connect to the Ray cluster at {where or 'this machine'}: "
                         f"{first_line(e)}") from None
    _started["cluster"] = _session(ray) if started else None
    return ray, started


def _shutdown(ray: Any) -> None:
    """Stop the local cluster :func:`connect` started (one that cannot hold the pool)."""
    ray.shutdown()
    _started["cluster"] = None


def _session(ray: Any) -> str:
    """The connected cluster's address (a cluster started after ``ray.shutdown`` has
    another)."""
    return str(ray.get_runtime_context().gcs_address)


def _host_port(address: str | None) -> tuple[str, str, str] | None:
    """``[ray://]HOST:PORT`` split at its last colon; None for ``auto``, ``local`` or none,
    which Ray resolves."""
    if not address or address in ("auto", "local"):
        return None
    return address.removeprefix("ray://").rpartition(":")


def _malformed(address: str | None) -> str | None:
    """Why ``address`` is no cluster address Ray takes, else None."""
    parts = _host_port(address)
    if parts is not None and "://" in parts[0]:  # http://...:8265 was looked up as a host name
        return ("expected HOST:PORT, ray://HOST:PORT or auto (an http:// address is the "
                "dashboard's, which `ray job submit` takes)")
    if parts is not None and (not parts[1] or not parts[2].isdigit()):
        return "expected HOST:PORT, ray://HOST:PORT or auto"
    return None


def _unreachable(address: str | None, timeout: float = 5.0) -> str | None:
    """Why nothing answers at a well-formed ``[ray://]HOST:PORT`` address (None: it answers,
    or Ray resolves the address)."""
    parts = _host_port(address)
    if parts is None or _malformed(address) is not None:
        return None
    host, _, port = parts
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        return f"nothing answers ({e.strerror or e})"
    return None


def unplaceable(config: RayConfig, resources: dict[str, float]) -> str | None:
    """Why a cluster with these ``resources`` (``ray.cluster_resources()``) cannot hold the
    pool now, else None: the actors would wait for it to grow, and a run wait in silence."""
    need = {"CPU": config.actors * config.num_cpus, "GPU": config.actors * config.num_gpus}
    short = [f"{need[k]:g} {k}s ({config.actors} actors x {need[k] / config.actors:g})"
             f" and it has {resources.get(k, 0.0):g}" for k in need
             if need[k] > resources.get(k, 0.0) + 1e-9]
    return "; ".join(short) or None


@dataclass(frozen=True)
class TooLong:
    """An :class:`~smysl.tokenize.InputTooLongError` on its way from an actor to the driver
    (the error itself does not pickle: Ray would deliver an unreadable one), its ``index`` in
    the actor's part of the texts."""

    index: int
    tokens: int
    limit: int
    who: str
    head: int = 0
    at_least: bool = False

    @classmethod
    def of(cls, e: InputTooLongError) -> TooLong:
        return cls(e.index, e.tokens, e.limit, e.who, e.head, e.at_least)

    def error(self, places: Sequence[int]) -> InputTooLongError:
        """The error, its index in the whole call (the part's input ``i`` is ``places[i]``
        there)."""
        return InputTooLongError(index=places[self.index], tokens=self.tokens,
                                 limit=self.limit, who=self.who, head=self.head,
                                 at_least=self.at_least)


class Worker:
    """What runs inside an actor: one model, loaded once."""

    def __init__(self, model: str, options: ModelOptions | None,
                 load_kwargs: dict[str, Any] | None = None) -> None:
        import smysl

        #: Why the model did not load, told by :meth:`describe`: an error raised here reaches
        #: the driver as Ray's ActorDiedError, its message a traceback of the actor's.
        self.failure: str | None = None
        try:
            self.model = smysl.load(model, options, **(load_kwargs or {}))
        except Exception as e:  # any backend's error, told whole to the driver
            self.failure = first_line(e)

    def describe(self) -> dict[str, Any]:
        if self.failure is not None:
            return {"failure": self.failure}
        before = self._usage()
        m = self.model
        about = {"name": m.name, "backend": m.backend, "dimensions": m.dimensions,
                 "min_dimensions": m.min_dimensions, "max_tokens": m.max_tokens,
                 "instruction_aware": m.instruction_aware, "default_task": m.default_task,
                 "source": m.source, "fingerprint": m.fingerprint()}
        return {**about, "usage": usage_delta(before, self._usage())}  # a width probe is billed

    def text_tokens(self) -> TextTokens | None:
        return self.model.text_tokens()

    def embed(self, texts: list[str], instruction: str | None, dimensions: int | None,
              truncate: bool) -> np.ndarray:
        return self.model.embed(texts, instruction=instruction, dimensions=dimensions,
                                truncate=truncate)

    def embed_formatted(self, texts: list[str], truncate: bool) -> np.ndarray:
        return self.model.embed_formatted(texts, truncate=truncate)

    def metered(self, method: str, *args: Any) -> tuple[Any, dict[str, Any] | None]:
        """``method(*args)`` and the provider usage it cost (None for a local model): the
        driver sums these, so usage survives an actor's restart (an actor runs one call at a
        time, so the difference is this call's)."""
        if self.failure is not None:  # an actor Ray restarted mid-run, that failed to load
            raise RuntimeError(f"a Ray actor could not load the model: {self.failure}")
        before = self._usage()
        try:
            out = getattr(self, method)(*args)
        except InputTooLongError as e:
            out = TooLong.of(e)
        except RejectedInputError as e:  # an input a provider refused: the row's (the job)
            out = e
        return out, usage_delta(before, self._usage())

    def _usage(self) -> dict[str, Any] | None:
        return self.model.usage_counts()

    def count_tokens(self, texts: list[str]) -> list[int] | None:
        try:
            return self.model.count_tokens(texts)
        except NotImplementedError:
            return None


def usage_delta(before: dict[str, Any] | None,
                after: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a provider's :meth:`Usage.snapshot` grew by between two snapshots (None: a model
    without usage)."""
    if after is None:
        return None
    from smysl.providers.usage import COUNTS

    out = {k: v for k, v in after.items() if k not in COUNTS and k != "cost"}
    out.update({k: int(after.get(k) or 0) - int((before or {}).get(k) or 0) for k in COUNTS})
    return out


#: Times a part of a call is redone on a replacement actor after its actor died (a node
#: lost, a process killed), before the call fails naming the part.
TASK_RETRIES = 3


class PartFailedError(RuntimeError):
    """Texts ``start`` to ``stop`` (exclusive) of a call killed every actor that took them,
    :data:`TASK_RETRIES` + 1 times: out of memory on them, or their nodes lost. A corpus job
    names their rows."""

    def __init__(self, start: int, stop: int, said: str) -> None:
        self.start, self.stop, self.said = start, stop, said
        super().__init__(
            f"a Ray actor died {TASK_RETRIES + 1} times embedding texts {start}..{stop - 1} of "
            f"this call ({stop - start} texts), each time on a replacement: out of memory on "
            f"these texts (a smaller --batch-size, or actors with more memory), or its nodes "
            f"lost; Ray said: {said}")

    def __reduce__(self) -> tuple[type[PartFailedError], tuple[int, int, str]]:
        return PartFailedError, (self.start, self.stop, self.said)


class RayEmbedder(BaseEmbedder):
    """A model loaded in every actor of a pool; each ``embed`` call is split over the pool."""

    #: What each actor runs (a subclass's tests give it one that fails on purpose).
    worker: type[Worker] = Worker

    def __init__(self, model: str, options: ModelOptions | None = None,
                 config: RayConfig = RayConfig(), **load_kwargs: Any) -> None:
        """``smysl.load(model, options, **load_kwargs)`` in each of ``config.actors`` actors
        (``load_kwargs``: a backend's own options, e.g. a provider's ``api_key``,
        ``dimensions``, ``price_per_mtok``; they travel to the actors pickled)."""
        ray, started = connect(config)
        self._ray = ray
        #: Provider usage summed over every actor's calls (None for a local model).
        self.usage: Any = None
        self._usage_lock = threading.Lock()
        short = unplaceable(config, ray.cluster_resources())
        if short is not None and started:  # it never grows: the run hung, "waiting for it"
            _shutdown(ray)
            raise ValueError(f"the local Ray cluster started for this run (this machine's "
                             f"CPUs and GPUs; it does not grow) cannot hold the actor pool: it "
                             f"needs {short}; use fewer actors (--actors) or per-actor "
                             f"resources, or a cluster's address (--ray HOST:PORT)")
        # a warning, not an error: a cluster one joins may grow
        if short is not None:
            warnings.warn(f"the Ray cluster cannot hold the actor pool now: it needs {short}; "
                          f"waiting for it to grow (Ctrl-C to stop; fewer --actors or "
                          f"--gpus-per-actor fit it)", RuntimeWarning, stacklevel=2)
        # a dead actor is replaced and its part redone, TASK_RETRIES times: a part that kills
        # every actor it reaches (out of memory on its texts) was redone without end
        remote = ray.remote(self.worker).options(
            num_cpus=config.num_cpus, num_gpus=config.num_gpus,
            max_restarts=-1, max_task_retries=TASK_RETRIES)
        # a relative folder names the driver's: the actors' working directory is another
        model = portable_model(model)
        self.actors = []
        try:
            self.actors = [remote.remote(model, options, load_kwargs or None)
                           for _ in range(config.actors)]
            about = ray.get(self.actors[0].describe.remote())
        except BaseException:
            # Ctrl-C while the actors load: they, and a cluster started for this run, went
            # on (two Ray agents were left running, and the process at times ended in a
            # segmentation fault)
            with contextlib.suppress(Exception):
                self.close()
            if started:  # even where killing an actor failed
                with contextlib.suppress(Exception):
                    _shutdown(ray)
            raise
        self._pool = config.actors
        if "failure" in about:
            self.close()
            failure = about["failure"]  # named by the model's string unless it names itself
            raise ValueError(f"{failure if model in failure else f'{model}: {failure}'} "
                             f"(in a Ray actor)")
        self._add_usage(about["usage"])
        self.name, self.backend = about["name"], about["backend"]
        self.dimensions, self.min_dimensions = about["dimensions"], about["min_dimensions"]
        self.max_tokens, self.instruction_aware = about["max_tokens"], about["instruction_aware"]
        self.default_task, self.source = about["default_task"], about["source"]
        self._fingerprint = about["fingerprint"]
        self._text_tokens: TextTokens | None = None
        self._text_tokens_fetched = False
        self._next = 0
        #: ((method, its arguments), {text: vector}) a refused call did embed (:meth:`_run`).
        self._held: tuple[tuple[str, tuple[Any, ...]], dict[str, np.ndarray]] | None = None
        self._held_lock = threading.Lock()

    def fingerprint(self) -> str:
        return str(self._fingerprint)

    def text_tokens(self) -> TextTokens | None:
        """The actors' model's tokenizer, fetched once (pickled, it counts here exactly as
        there): chunks are cut to the model's tokens, not approximated."""
        if not self._text_tokens_fetched:
            self._text_tokens = self._ray.get(self.actors[0].text_tokens.remote())
            self._text_tokens_fetched = True
        return self._text_tokens

    def _parts(self, n: int) -> list[slice]:
        k = min(len(self.actors), n)
        bounds = np.linspace(0, n, k + 1).astype(int)
        return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]

    def embed(self, texts: str | Sequence[str], *, instruction: str | None = None,
              dimensions: int | None = None, truncate: bool = False,
              progress: bool | Progress = False) -> np.ndarray:
        """As :meth:`BaseEmbedder.embed`, its arguments checked here, before any actor works
        (``truncate="no"`` cut texts, a bad size was a Ray traceback); the actors' models apply
        every rule (a provider's own Matryoshka size included), and ``progress`` advances as
        each actor's part returns."""
        items = self._check_texts(texts)
        truncate = check_flag(truncate, "truncate")
        check_progress(progress)
        if not items:
            return np.zeros((0, self._empty_width(dimensions)), np.float32)  # size checked
        if dimensions is not None:
            self.check_dimensions(dimensions)
        with progress_bar(progress, len(items)) as bar:
            return self._run("embed", items, (instruction, dimensions, truncate), bar)

    def _embed(self, texts: list[str], *, truncate: bool,
               progress: Progress | None = None) -> np.ndarray:
        return self._run("embed_formatted", texts, (truncate,), progress)

    def _run(self, method: str, texts: list[str], args: tuple[Any, ...],
             progress: Progress | None = None) -> np.ndarray:
        """``Worker.method(part, *args)`` on every actor's part of ``texts``, in order
        (``progress`` told of each part as it returns); a text too long raises
        :class:`~smysl.tokenize.InputTooLongError` with its index in ``texts``, and one a
        provider refused :class:`~smysl.providers.errors.RejectedInputError` with its places
        in ``texts``, as one model would.

        What a refused call did embed (the other parts, and the refused part's rows before the
        refusal) is held here: the call repeated without the refused text (a corpus job's)
        sends only the rest. Split anew over the actors, it would pay for them again, since
        each provider object keeps only its own."""
        with self._held_lock:
            held = self._held if self._held is not None and self._held[0] == (method, args) \
                else None
        have = held[1] if held is not None else {}
        send = [i for i, t in enumerate(texts) if t not in have]
        if progress is not None and len(send) < len(texts):
            progress.update(len(texts) - len(send))
        parts = self._parts(len(send))
        futures = [self.actors[k].metered.remote(method, [texts[i] for i in send[s]], *args)
                   for k, s in enumerate(parts)]
        size = {f: s.stop - s.start for f, s in zip(futures, parts, strict=True)}
        pending = list(futures)
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1)
            if progress is not None:
                progress.update(sum(size[f] for f in done))
        results, failed = [], None
        for f, part in zip(futures, parts, strict=True):
            try:
                results.append(self._ray.get(f))
            except self._ray.exceptions.RayActorError as e:
                failed = failed or PartFailedError(send[part.start], send[part.stop - 1] + 1,
                                                   first_line(e))
        for _, usage in results:  # what the other parts cost, billed whatever failed
            self._add_usage(usage)
        if failed is not None:
            raise failed
        for part, (out, _) in zip(parts, results, strict=True):
            if isinstance(out, TooLong):
                raise out.error(send[part])
        refused = [(part, out) for part, (out, _) in zip(parts, results, strict=True)
                   if isinstance(out, RejectedInputError)]
        if refused:
            kept = dict(have)
            for p, (out, _) in zip(parts, results, strict=True):
                if isinstance(out, np.ndarray):
                    kept.update(zip((texts[i] for i in send[p]), out, strict=True))
            for part, error in refused:
                if error.done:  # its raw rows, made what the actor's call would have returned
                    rows = (error.rows if method == "embed_formatted" else
                            finish(error.rows, args[1] or error.rows.shape[1]))
                    kept.update(zip((texts[send[part.start + i]] for i in error.done), rows,
                                    strict=True))
            with self._held_lock:
                self._held = ((method, args), kept)
            part, error = refused[0]
            raise error.placed(send[part], len(texts))
        got = [out for out, _ in results]
        width = got[0].shape[1] if got else next(iter(have.values())).shape[0]
        vectors = np.empty((len(texts), width), np.float32)
        for part, out in zip(parts, got, strict=True):
            vectors[send[part]] = out
        for i, t in enumerate(texts):
            if t in have:
                vectors[i] = have[t]
        if held is not None and len(send) < len(texts):
            # used: a later call pays again, as any call does (one that used none, a job's
            # probe of its settings, leaves them for the repeat that follows)
            with self._held_lock:
                if self._held is held:
                    self._held = None
        return vectors

    def _add_usage(self, delta: dict[str, Any] | None) -> None:
        if delta is None:
            return
        from smysl.providers.usage import Usage

        with self._usage_lock:
            if self.usage is None:
                self.usage = Usage(delta["provider"], delta["model"], delta["price_per_mtok"],
                                   delta["price_per_request"])
            self.usage.add(delta)

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        items = self._check_texts(texts)
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        counts = self._ray.get(actor.count_tokens.remote(items))
        if counts is None:
            raise NotImplementedError(f"{self.name} cannot count tokens")
        return list(counts)

    def usage_report(self) -> str | None:
        """A provider's usage summed over the actors (every call that returned), as one
        provider object reports it; None for a local model."""
        if self.usage is None:
            return None
        return f"{self.usage} (summed over {self._pool} actors)"

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []


class _DatasetWorker(Worker):
    """The ``map_batches`` callable: a batch of (id, text) rows -> output rows."""

    def __init__(self, model: str, options: ModelOptions | None, id_column: str,
                 text_column: str, instruction: str | None, dimensions: int | None,
                 truncate: bool, load_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(model, options, load_kwargs)
        if self.failure is not None:  # Ray Data reports an actor that fails to start
            raise ValueError(f"{model}: {self.failure}")
        if dimensions is not None:  # at the pool's start, not in every batch (None costs a
            self.model.check_dimensions(dimensions)  # remote model a billed width probe)
        self.columns = (id_column, text_column)
        self.settings = (instruction, dimensions, truncate)
        self.fp = self.model.fingerprint()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Raises :class:`~smysl.scale.job.BadRowError` for a row without a usable id or text
        (a null is not the string "None"), as the job's rule (:func:`to_row`) says."""
        from smysl.scale.job import BadRowError, embedded_tokens

        id_column, text_column = self.columns
        rows = [to_row(n, {id_column: i, text_column: t}, id_column, text_column)
                for n, (i, t) in enumerate(zip(batch[id_column], batch[text_column],
                                               strict=True), 1)]
        for row, i, t in zip(rows, batch[id_column], batch[text_column], strict=True):
            if row.problem is not None:
                # pandas' None of a text column is NaN (pd.NA in a string column, shown
                # "<NA>"): said as the null it stands for
                i, t = (None if missing(v) else v for v in
                        (v.item() if isinstance(v, np.generic) else v for v in (i, t)))
                text = t[:40] + "..." if isinstance(t, str) and len(t) > 40 else t
                raise BadRowError(f"Ray Data row ({id_column}={i!r}, {text_column}={text!r}): "
                                  f"{row.problem}; drop such rows first (ds.filter(...))")
        ids, texts = [r.id for r in rows], [r.text for r in rows]
        instruction, dimensions, truncate = self.settings
        try:
            vectors = self.embed(texts, instruction, dimensions, truncate)
        except InputTooLongError as e:  # its index is the row's place in a Ray batch: no help
            raise BadRowError(f"Ray Data row ({id_column}={ids[e.index]!r}): "
                              f"{'at least ' if e.at_least else ''}{e.tokens:,} "
                              f"tokens, over the model's {e.limit:,}; drop or cut such rows "
                              "first, or pass truncate=True") from e
        tokens = embedded_tokens(self.model, texts, instruction, truncate)
        return {"id": np.asarray(ids, dtype=object), "vector": vectors,
                "dimensions": np.full(len(ids), vectors.shape[1], np.int32),
                "model": np.asarray([self.fp] * len(ids), dtype=object),
                "tokens": np.asarray(tokens if tokens is not None else [-1] * len(ids),
                                     np.int32)}


def embed_dataset(ds: Any, model: str, options: ModelOptions | None = None, *,
                  id_column: str = "id", text_column: str = "text",
                  instruction: str | None = None, dimensions: int | None = None,
                  truncate: bool = False, config: RayConfig = RayConfig(),
                  batch_size: int = 256, load_kwargs: dict[str, Any] | None = None) -> Any:
    """A ``ray.data.Dataset`` of (id, text) rows -> one of (id, vector, dimensions, model
    fingerprint, tokens as embedded; -1 where the backend cannot count), embedded by
    ``config.actors`` actors, each holding ``smysl.load(model, options, **load_kwargs)``. A row
    without a usable id or text (a null, an empty id), or too long without ``truncate``, fails
    the run with :class:`~smysl.scale.job.BadRowError` naming it, as the job's rows do (Ray
    Data raises it wrapped, as a ``ray.exceptions.RayTaskError`` whose message carries it,
    when the dataset is consumed); the ids are not checked for repeats (Ray Data has no order
    to name the first by). Missing columns are refused here, where the dataset's schema is
    known without running it.

    The pool holds ``actors x num_cpus`` CPUs for the whole run; Ray Data's read tasks need
    CPUs besides (one each by default). A cluster with no CPU left over stalls for good, so
    that is warned about (an autoscaling cluster may still add nodes). A dataset of fewer
    blocks than actors keeps some idle: ``ds.repartition(n)`` spreads a small one.
    """
    # a role name or a misspelt preset: here, not in every batch after the actors loaded
    resolve_task(instruction)
    check_flag(truncate, "truncate")
    ray, started = connect(config)
    schema = ds.schema(fetch_if_missing=False)  # known without running the dataset, or None
    if schema is not None and (gone := [c for c in (id_column, text_column)
                                        if c not in schema.names]):
        # a KeyError in the pool's first batch, after the actors had loaded the model
        raise ValueError(f"the dataset has no column {', '.join(map(repr, gone))} (its "
                         f"columns: {', '.join(schema.names)}); pass id_column= / text_column=")
    model = portable_model(model)
    cpus = ray.cluster_resources().get("CPU", 0.0)
    free = cpus - config.actors * config.num_cpus
    if free < 1 and started:  # a cluster that never grows: the run would stall for good
        _shutdown(ray)
        raise ValueError(
            f"the local Ray cluster started for this run has {cpus:g} CPUs: a pool of "
            f"{config.actors} actors x {config.num_cpus:g} CPUs leaves none for Ray Data's "
            f"read tasks; use fewer actors, RayConfig(num_cpus=0.5), or a cluster's address")
    if free < 1:
        warnings.warn(
            f"the pool of {config.actors} actors x {config.num_cpus:g} CPUs leaves "
            f"{max(free, 0.0):g} of the cluster's CPUs for Ray Data's read tasks: the run "
            f"stalls unless the cluster grows; use fewer actors, RayConfig(num_cpus=0.5), or "
            f"a cluster with a spare CPU (ray.init(num_cpus=...) counts logical CPUs)",
            RuntimeWarning, stacklevel=2)
    # Ray Data restarts a dead pool actor and redoes its batch by itself
    return ds.map_batches(
        _DatasetWorker, batch_format="numpy", batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=config.actors),
        num_cpus=config.num_cpus, num_gpus=config.num_gpus,
        fn_constructor_kwargs={"model": model, "options": options, "id_column": id_column,
                               "text_column": text_column, "instruction": instruction,
                               "dimensions": dimensions, "truncate": truncate,
                               "load_kwargs": load_kwargs})
