"""Drafting threads: one batched ``propose`` / ``observe_batch`` split across worker threads.

The model-free drafters' kernels are numba functions compiled with ``nogil=True``; a batch
is cut into contiguous row ranges (balanced by budget), one per worker, each with its own
scratch, and the ranges run on a small shared thread pool (the calling thread takes a share
too). What makes the result independent of the thread count:

* per-request state is touched by one worker at a time (a row range owns its requests);
* shared tables keyed by token (the adjacency table, the pair table) are updated by row
  ownership: every part scans all updates in their serial order and applies only the rows
  it owns (``row % parts == part``), so each row sees the serial write sequence; counters
  shared by all rows (calibration hits / trials) are counted per part and added after, in
  part order (integer counts on dyadic values: exact, so equal to the serial sums);
* the n-gram automaton's feed stays serial (one task, overlapped with the table updates):
  all owners share one node free list and one open-addressing child table (inserts and
  backward-shift deletes move other owners' entries), so per-owner caps
  (``max_nodes_per_request``) bound memory but do not make feeds independent.

Thread count: the drafter option ``draft_threads`` (0: automatic), else the environment
variable ``SPECPLUG_DRAFT_THREADS``, else half the cores this process may run on (at most
8; an engine that runs other host work beside drafting, or several ranks per host, sets
it). Small batches run on the calling thread alone: below ``min_rows`` rows per worker
(measured per algorithm, see ``specplug bench-drafters --draft-threads``) handing work to
a thread costs more than it saves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import ConfigError
from .options import Option

__all__ = [
    "ENV_VAR",
    "THREADS_OPTION",
    "DraftThreads",
    "available_cores",
    "default_threads",
    "resolve_threads",
    "split_rows",
]

ENV_VAR = "SPECPLUG_DRAFT_THREADS"
MAX_THREADS = 64

#: the option every model-free drafter declares
THREADS_OPTION = Option(
    "draft_threads",
    int,
    0,
    f"threads one batched propose / observe is split across (0: ${ENV_VAR}, else half the cores, "
    "at most 8); drafts are identical at every thread count",
    0,
    MAX_THREADS,
)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """``$SPECPLUG_DRAFT_THREADS``, else half the available cores (1..8)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = -1
        if not 1 <= n <= MAX_THREADS:
            raise ConfigError(f"{ENV_VAR} must be an integer in [1, {MAX_THREADS}], got {env!r}")
        return n
    return max(1, min(8, available_cores() // 2))


def resolve_threads(option: int) -> int:
    """The thread count of a drafter whose ``draft_threads`` option is ``option``."""
    return int(option) if option and option > 0 else default_threads()


def split_rows(weights: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous row ranges [lo, hi) of about equal total weight (e.g. budgets)."""
    n = int(weights.shape[0])
    if parts <= 1 or n <= 1:
        return [(0, n)]
    cum = np.cumsum(np.asarray(weights, np.float64))
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts, side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.clip(cuts, 1, n - 1), [n]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process-wide pool of ``workers`` threads (created once, shared by drafters)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="specplug-draft")
        return pool


class DraftThreads:
    """A drafter's thread count and the runner of its parallel parts."""

    def __init__(self, n: int):
        if not 1 <= int(n) <= MAX_THREADS:
            raise ConfigError(f"draft_threads must be an integer in [1, {MAX_THREADS}], got {n!r}")
        self.n = int(n)

    def workers(self, rows: int, min_rows: int) -> int:
        """Workers for a batch of ``rows`` requests: 1 below ``min_rows`` rows per worker."""
        return max(1, min(self.n, int(rows) // max(1, int(min_rows))))

    def run(self, tasks: Sequence[Callable[[], object]], workers: int | None = None) -> None:
        """Run independent tasks (longest first is best), on ``workers`` threads (default:
        all), the calling thread included; the first exception is raised after all ended."""
        n = min(self.n if workers is None else workers, len(tasks))
        if n <= 1:
            for task in tasks:
                task()
            return
        lock = threading.Lock()
        todo = iter(tasks)
        errors: list[BaseException] = []

        def drain() -> None:
            while True:
                with lock:
                    task = next(todo, None)
                if task is None:
                    return
                try:
                    task()
                except BaseException as e:  # noqa: BLE001 -- re-raised on the calling thread
                    errors.append(e)

        futures = [_pool(self.n - 1).submit(drain) for _ in range(n - 1)]
        drain()
        for f in futures:
            f.result()
        if errors:
            raise errors[0]
