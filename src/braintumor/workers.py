"""How many CPUs this process may use, and a per-file map that uses threads only where they pay.

Reading a folder is one call per file: decode (PIL), crop (SciPy), resize (PIL). PIL and NumPy release the GIL
while they work on large images, so two threads read 512-px JPEGs almost twice as fast as one. On small images
(64-px PNGs) most of the time is Python around those calls, and threads only fight over the GIL: two threads read
them 1.3-1.7x *slower* than one (measured on 10,000 phantoms, ``benchmarks/scale.py``). :func:`imap_files` times
the first few files in the calling thread and only then decides. Results and their order never depend on the
choice, only the speed does.

Light on purpose (no torch): the duplicate audit, the image cache and training all use it.

Example:
    >>> from braintumor.workers import available_cpus, imap_files
    >>> available_cpus() >= 1
    True
    >>> list(imap_files(lambda x: x * x, range(5)))
    [0, 1, 4, 9, 16]
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Files timed in the calling thread before deciding on threads.
PROBE = 4
#: Threads are used when the probed files took at least this long each (seconds; their median: the first call
#: often pays for imports and warm-up that the others do not).
THREADS_FROM_SECONDS = 0.001


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def imap_files(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None, *,
               probe: int = PROBE, threads_from: float = THREADS_FROM_SECONDS) -> Iterator[R]:
    """``fn(item)`` for every item, in order, in up to ``workers`` threads (default: :func:`available_cpus`).

    The first ``probe`` items run in the calling thread, timed; the rest run in threads only when those took at
    least ``threads_from`` seconds each (their median; ``workers=1``: never; ``probe=0``: always).
    """
    items = list(items)
    workers = min(workers or available_cpus(), max(1, len(items)))
    head = len(items) if workers == 1 else min(probe, len(items))
    spent: list[float] = []
    for item in items[:head]:
        t = time.perf_counter()
        out = fn(item)
        spent.append(time.perf_counter() - t)
        yield out
    rest = items[head:]
    if not rest:
        return
    if head and statistics.median(spent) < threads_from:
        for item in rest:
            yield fn(item)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, rest)
