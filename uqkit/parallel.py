"""Run independent tasks (ensemble members, chains, restarts, benchmark splits) locally or on Ray.

``backend="local"`` runs the tasks one after another in this process; ``backend="ray"`` submits each
as a Ray task (``ray.init()`` on this machine when no cluster is given, ``address=`` for an existing
one). Results come back in task order and do not depend on where a task ran: every task derives its
random streams from its own seed, never from its placement. Ray re-runs a task whose worker died
(``max_retries``); finished tasks keep their results. With ``checkpoint_dir``, each finished task's
result is written there atomically, so a whole run that was interrupted and restarted recomputes only
the tasks that had not finished.

Progress is one bar for the whole run: a task receives a ``report(num_steps)`` callback; locally it
advances the bar directly, on Ray it goes to a small actor that the driver polls.

Ray is an optional dependency: ``pip install 'uqkit[ray]'``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from uqkit._io import load_tensors, save_tensors

T = TypeVar("T")
Report = Callable[[int], None]
#: A task function: ``fn(task, report) -> dict[str, Tensor]``; ``report(n)`` says n more steps are done.
TaskFn = Callable[[Any, Report], dict[str, Tensor]]

BACKENDS = ("local", "ray")
_KIND = "uqkit.task-result/1"
_POLL_S = 0.2  # how often the driver polls Ray for finished tasks and progress


def check_backend(backend: object) -> str:
    """``backend`` if it is one we know, else a ValueError listing them."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend  # type: ignore[return-value]


def run_tasks(fn: TaskFn, tasks: Sequence[Any], *, backend: str = "local", address: str | None = None,
              total_steps: int | None = None, desc: str = "tasks", progress: bool = True,
              checkpoint_dir: str | Path | None = None, max_retries: int = 3,
              num_cpus_per_task: float = 1.0) -> list[dict[str, Tensor]]:
    """Run ``fn(task, report)`` for every task and return the results in task order.

    Args:
        fn: a task function returning a dict of tensors (what a checkpoint can hold). On Ray it must
            be picklable (a module-level function or a `functools.partial` of one).
        tasks: the tasks' arguments (picklable on Ray).
        backend: "local" or "ray".
        address: a Ray cluster address ("host:port" or "ray://host:port"); None starts Ray locally.
        total_steps: the progress bar's total (the sum of what tasks report); None counts tasks.
        desc: the progress bar's label.
        progress: show the progress bar.
        checkpoint_dir: keep each finished task's result here (``task-<i>.safetensors``) and reuse it
            on the next call instead of running the task again.
        max_retries: Ray re-runs a task whose worker died up to this many times.
        num_cpus_per_task: CPUs Ray reserves for each task.

    Raises:
        ValueError: an unknown backend, an unreachable address, a function or task that cannot be
            serialised (naming it), or a task that failed (naming it).
        ImportError: backend="ray" without Ray installed, saying how to install it.
    """
    check_backend(backend)
    if not tasks:
        raise ValueError("tasks: expected at least one task, got none")
    store = _ResultStore(checkpoint_dir, len(tasks))
    pending = [i for i in range(len(tasks)) if not store.has(i)]
    results: dict[int, dict[str, Tensor]] = {i: store.load(i) for i in range(len(tasks)) if store.has(i)}
    total = total_steps if total_steps is not None else len(tasks)
    initial = len(tasks) - len(pending) if total_steps is None else 0
    with tqdm(total=total, initial=initial, desc=desc, disable=not progress, leave=False) as bar:
        if backend == "local":
            for i in pending:
                result = _checked_result(fn(tasks[i], bar.update), i)
                store.save(i, result)
                results[i] = result
                if total_steps is None:
                    bar.update(1)
        elif pending:
            for i, result in _run_on_ray(fn, tasks, pending, address=address, bar=bar,
                                         count_tasks=total_steps is None, max_retries=max_retries,
                                         num_cpus_per_task=num_cpus_per_task):
                store.save(i, result)
                results[i] = result
    return [results[i] for i in range(len(tasks))]


# ------------------------------------------------------------------------------------------ internals
class _ResultStore:
    """Finished tasks' results on disk (or nowhere when ``root`` is None)."""

    def __init__(self, root: str | Path | None, num_tasks: int) -> None:
        self.root = None if root is None else Path(root)
        self.num_tasks = num_tasks
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, i: int) -> Path:
        assert self.root is not None
        return self.root / f"task-{i}-of-{self.num_tasks}.safetensors"

    def has(self, i: int) -> bool:
        return self.root is not None and self._path(i).exists()

    def load(self, i: int) -> dict[str, Tensor]:
        return load_tensors(self._path(i), kind=_KIND)[0]

    def save(self, i: int, result: dict[str, Tensor]) -> None:
        if self.root is not None:
            save_tensors(self._path(i), result, kind=_KIND)


def _checked_result(result: object, i: int) -> dict[str, Tensor]:
    if not isinstance(result, dict) or not all(isinstance(v, Tensor) for v in result.values()):
        raise TypeError(f"fn: task {i} returned {type(result).__name__}; expected a dict of tensors")
    return result


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError("backend='ray' needs Ray: pip install 'uqkit[ray]' (or pip install ray)") from error
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the address in the message, when nothing listens at ``host:port``."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address: expected 'host:port' or 'ray://host:port', got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise ValueError(f"address: no Ray cluster reachable at {address!r} ({error})") from error


def connect_ray(address: str | None = None, *, num_cpus: int | None = None,
                runtime_env: dict[str, Any] | None = None) -> Any:
    """Start Ray on this machine (``address=None``) or join a cluster; returns the ``ray`` module.

    Args:
        address: "host:port", "ray://host:port" or "auto"; checked for reachability first.
        num_cpus: CPUs a local Ray may use (None: all); only without ``address``.
        runtime_env: Ray's runtime environment for the workers (e.g. ``{"working_dir": ...}`` to
            ship a folder of scripts they import).
    """
    ray = _import_ray()
    if address is not None:
        _check_reachable(address)
    ray.init(address=address, num_cpus=num_cpus, runtime_env=runtime_env, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, initialised on the given cluster (or locally); a session started here is shut down after."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        connect_ray(address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _check_serializable(ray: Any, obj: object, name: str) -> None:
    try:
        ray.cloudpickle.dumps(obj)
    except Exception as error:  # noqa: BLE001 - any pickling failure is reported the same way
        raise ValueError(f"{name}: cannot be sent to Ray workers ({type(obj).__name__} is not serialisable: "
                         f"{error}); use module-level functions and plain tensors/modules") from error


def _run_on_ray(fn: TaskFn, tasks: Sequence[Any], pending: list[int], *, address: str | None, bar: Any,
                count_tasks: bool, max_retries: int, num_cpus_per_task: float) -> Iterator[tuple[int, dict[str, Tensor]]]:
    ray = _import_ray()
    _check_serializable(ray, fn, "fn")
    for i in pending:
        _check_serializable(ray, tasks[i], f"tasks[{i}]")
    with ray_session(address) as ray:
        counter = ray.remote(num_cpus=0)(_StepCounter).remote()
        remote = ray.remote(num_cpus=num_cpus_per_task, max_retries=max_retries)(_run_one)
        threads = max(1, int(num_cpus_per_task))
        dtype = torch.get_default_dtype()
        shared_fn = ray.put(fn)  # serialised once (with whatever data it carries), not once per task
        refs = {remote.remote(shared_fn, tasks[i], counter, threads, dtype): i for i in pending}
        shown = 0
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=_POLL_S)
            if not count_tasks:
                shown = _show_steps(ray, counter, bar, shown)
            for ref in ready:
                i = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - re-raised with the task named
                    raise ValueError(f"tasks[{i}]: failed on Ray after {max_retries} retries: {error}") from error
                if count_tasks:
                    bar.update(1)
                yield i, _checked_result(result, i)
        if not count_tasks:
            _show_steps(ray, counter, bar, shown)


def _show_steps(ray: Any, counter: Any, bar: Any, shown: int) -> int:
    """Advance ``bar`` to the steps the tasks have reported so far; returns that count."""
    steps = ray.get(counter.total.remote())
    bar.update(steps - shown)
    return steps


class ReportBar:
    """A stand-in for a tqdm bar inside a task: ``update(n)`` goes to the task's ``report`` callback."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def update(self, num_steps: int = 1) -> None:
        self.report(num_steps)

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Postfixes are per-bar detail; a task's bar has none."""


class _StepCounter:
    """A Ray actor summing the steps that tasks report."""

    def __init__(self) -> None:
        self.steps = 0

    def add(self, num_steps: int) -> None:
        self.steps += num_steps

    def total(self) -> int:
        return self.steps


def _run_one(fn: TaskFn, task: Any, counter: Any, num_threads: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """A Ray task: run ``fn`` as the driver would (its default dtype; one intra-op thread per reserved
    CPU), reporting steps to ``counter``."""
    torch.set_num_threads(num_threads)
    torch.set_default_dtype(dtype)
    pending = 0
    last = time.monotonic()

    def report(num_steps: int) -> None:
        nonlocal pending, last
        pending += num_steps
        if time.monotonic() - last > _POLL_S:
            counter.add.remote(pending)
            pending, last = 0, time.monotonic()

    result = fn(task, report)
    if pending:
        counter.add.remote(pending)
    return result
