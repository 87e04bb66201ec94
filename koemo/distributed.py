"""Ray as the distributed engine: ``--ray`` (a local cluster started here) or ``--ray-address``
(an existing cluster) sends transcription, feature extraction and the grid's training to Ray.

Nothing here imports Ray until a ``--ray`` path runs (:func:`connect`), so Ray stays an optional
extra (``pip install 'koemo[distributed]'``). Two shapes of work:

* :func:`map_actors`: long-lived workers (Ray actors) that build their model once
  (``factory()``) and then apply ``fn(model, item)`` to item after item. Results come back to the
  driver as they finish, and the driver writes them into the same caches and stores the local
  path uses, so a re-run resumes from what was written. A killed actor is restarted (its model
  built again) and its items are retried.
* :func:`map_tasks`: independent tasks ``fn(shared, item)`` (the grid's (job, seed) units), with
  ``shared`` put into Ray's object store once; a task whose worker dies is retried.

Workers see the driver's ``KOEMO_*`` environment (cache, models, data roots): on a cluster of
several machines those paths must name the same shared storage on every node (docs/scaling.md).
Registries filled by code outside koemo (a plug-in recogniser or encoder) are filled on the
workers too: callers name the modules that register them (``plugins``).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from koemo.errors import KoemoError

log = logging.getLogger("koemo")

#: the one-line hint when Ray is not installed
INSTALL_HINT = "--ray needs Ray: pip install 'koemo[distributed]' (or: pip install 'ray>=2.40,<3')"


@dataclass(frozen=True)
class Engine:
    """Where and how work runs: ``address`` None starts a local cluster (all this machine's
    CPUs); ``cpus`` is what each actor or task asks Ray for, ``gpus`` what each task of
    :func:`map_tasks` (the grid's training) asks for: koemo's recognisers and frozen encoders
    run on CPUs, so the actors of :func:`map_actors` ask for none unless told."""

    address: str | None = None
    gpus: float = 0.0
    cpus: float = 1.0


_ENGINE: Engine | None = None


def active() -> Engine | None:
    """The engine in use (inside :func:`engine`), or None: run in this process as always."""
    return _ENGINE


@contextmanager
def engine(address: str | None = None, gpus: float = 0.0, cpus: float = 1.0) -> Iterator[Engine]:
    """Send the work of the ``with`` block to Ray (connecting now, so a missing Ray or an
    unreachable cluster fails at once)."""
    global _ENGINE
    if gpus < 0 or cpus <= 0:
        raise KoemoError(f"--ray-gpus {gpus}, cpus {cpus}: resources per worker must be positive")
    previous, _ENGINE = _ENGINE, Engine(address, gpus, cpus)
    try:
        connect()
        yield _ENGINE
    finally:
        _ENGINE = previous


def _ray():
    try:
        import ray
    except ImportError:
        raise KoemoError(INSTALL_HINT) from None
    return ray


def connect():
    """The ``ray`` module, connected: to the engine's address, or to a local cluster with this
    machine's CPUs started now (reused when this process is already connected)."""
    ray = _ray()
    if not ray.is_initialized():
        eng = _ENGINE or Engine()
        kw = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)  # quiet: koemo reports
        try:
            if eng.address:
                ray.init(address=eng.address, **kw)
            else:
                ray.init(address="local", num_cpus=os.cpu_count(), **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = eng.address or "a local cluster"
            hint = ("; a cluster with token authentication (Ray's default) also needs RAY_AUTH_MODE=token and "
                    "its token here (docs/scaling.md)" if eng.address and not os.environ.get("RAY_AUTH_MODE") else "")
            raise KoemoError(f"cannot start or reach Ray at {where} "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}){hint}") from None
    return ray


def worker_env() -> dict[str, str]:
    """The driver's ``KOEMO_*`` variables, set on every worker before it runs anything."""
    return {k: v for k, v in os.environ.items() if k.startswith("KOEMO_")}


def _prepare(env: dict[str, str], plugins: Sequence[str]) -> None:
    os.environ.update(env)
    for name in plugins:
        importlib.import_module(name)


class _Host:
    """One actor: builds its state once, then applies ``fn`` to items."""

    def __init__(self, env: dict[str, str], plugins: Sequence[str], factory: Callable[[], Any],
                 fn: Callable[[Any, Any], Any]):
        _prepare(env, plugins)
        self.fn, self.error = fn, None
        try:
            self.state = factory()
        except KoemoError as e:  # a model not installed on this node: said by the first item, not retried
            self.error = e

    def run(self, item: Any) -> Any:
        if self.error is not None:
            raise self.error
        return self.fn(self.state, item)


def _task(env: dict[str, str], plugins: Sequence[str], fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    _prepare(env, plugins)
    return fn(shared, item)


def _slots(ray, cpus: float, gpus: float) -> int:
    """How many workers the cluster can run at once, by the resource each one asks for most."""
    res = ray.cluster_resources()
    n = int(res.get("CPU", 1) // cpus)
    if gpus:
        n = min(n, int(res.get("GPU", 0) // gpus))
        if n < 1:
            raise KoemoError(f"--ray-gpus {gpus:g}: the Ray cluster has {res.get('GPU', 0):g} GPUs")
    return max(1, n)


def _get(ray, ref, retries: int) -> Any:
    """``ray.get(ref)``: a koemo error raised on the worker as itself (one line for the CLI), a
    worker that died more often than it may be retried as a :class:`KoemoError`."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, KoemoError):
            raise e.cause from None
        raise
    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
        raise _died(e, retries) from None


def _died(e: Exception, retries: int) -> KoemoError:
    first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return KoemoError(f"a Ray worker failed or died (after {retries} retries): {first}")


def map_actors(factory: Callable[[], Any], items: Iterable, fn: Callable[[Any, Any], Any], *,
               num_actors: int | None = None, max_retries: int = 3, plugins: Sequence[str] = (),
               inflight: int = 2, gpus: float = 0.0) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(factory(), item))`` for every item, in the order they finish, from
    ``num_actors`` actors (default: as many as the cluster has room for) that each call
    ``factory`` once (and asks for ``gpus`` GPUs). Each actor holds up to ``inflight`` items so
    it never waits for the driver.
    A killed actor is restarted up to ``max_retries`` times and its items retried; a
    :class:`KoemoError` ``fn`` or ``factory`` raises reaches the caller as itself, any other
    exception as Ray's error (also an instance of the original class)."""
    items = list(items)
    if not items:
        return
    ray = connect()
    eng = _ENGINE or Engine()
    n = max(1, min(num_actors or _slots(ray, eng.cpus, gpus), len(items)))
    host = ray.remote(_Host).options(num_cpus=eng.cpus, num_gpus=gpus, max_restarts=max_retries,
                                     max_task_retries=max_retries)
    env = worker_env()
    actors = [host.remote(env, tuple(plugins), factory, fn) for _ in range(n)]
    queue = deque(range(len(items)))
    running: dict[Any, tuple[Any, int]] = {}

    def submit(actor) -> None:
        if queue:
            i = queue.popleft()
            running[actor.run.remote(items[i])] = (actor, i)

    try:
        for _ in range(inflight):
            for a in actors:
                submit(a)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, i = running.pop(ref)
            result = _get(ray, ref, max_retries)
            submit(actor)
            yield items[i], result
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)


def map_tasks(fn: Callable[[Any, Any], Any], items: Iterable, *, shared: Any = None, max_retries: int = 3,
              plugins: Sequence[str] = ()) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(shared, item))`` for every item, in the order they finish, each item a Ray
    task (as many at once as the cluster has room for); ``shared`` goes into the object store
    once. A task whose worker dies is retried up to ``max_retries`` times."""
    items = list(items)
    if not items:
        return
    ray = connect()
    eng = _ENGINE or Engine()
    _slots(ray, eng.cpus, eng.gpus)  # fails at once when the cluster has fewer GPUs than one task asks for
    task = ray.remote(_task).options(num_cpus=eng.cpus, num_gpus=eng.gpus, max_retries=max_retries)
    shared_ref, env = ray.put(shared), worker_env()
    running = {task.remote(env, tuple(plugins), fn, shared_ref, item): i for i, item in enumerate(items)}
    try:
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            i = running.pop(ref)
            yield items[i], _get(ray, ref, max_retries)
    finally:
        for ref in running:
            ray.cancel(ref, force=True)


def plugin_modules(*objects: Any) -> tuple[str, ...]:
    """The modules defining ``objects``' classes that are not part of koemo: the workers import
    them so that plug-ins registered there (a recogniser, an encoder) exist on the workers too."""
    out = []
    for o in objects:
        mod = type(o).__module__
        if not mod.startswith("koemo.") and mod not in ("builtins", "__main__") and mod not in out:
            out.append(mod)
    return tuple(out)
