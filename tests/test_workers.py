"""The per-file map: order kept, threads only where a probed file was slow, errors surface."""

import threading
import time

import pytest

from braintumor.workers import available_cpus, imap_files


def _threads_used(fn, n=24, **kw):
    seen = []

    def work(x):
        seen.append(threading.get_ident())
        return fn(x)

    out = list(imap_files(work, range(n), 2, **kw))
    assert out == [fn(x) for x in range(n)]
    return set(seen)


def test_fast_items_stay_in_the_calling_thread():
    assert _threads_used(lambda x: x + 1) == {threading.get_ident()}


def test_slow_items_go_to_threads_after_the_probe():
    def slow(x):
        time.sleep(0.003)
        return -x

    used = _threads_used(slow)
    assert threading.get_ident() in used and len(used) >= 2


def test_one_slow_first_item_does_not_start_threads():
    """The first call often pays for imports and warm-up: the probe's median decides, not its mean (GIL-bound
    small files run slower in threads than in the calling thread)."""
    def warm_up_first(x):
        if x == 0:
            time.sleep(0.02)
        return x * 2

    assert _threads_used(warm_up_first) == {threading.get_ident()}


def test_one_worker_never_starts_threads_and_errors_surface():
    assert list(imap_files(str, [1, 2], workers=1, probe=0)) == ["1", "2"]

    def boom(x):
        if x == 7:
            raise ValueError("seven")
        time.sleep(0.002)
        return x

    with pytest.raises(ValueError, match="seven"):
        list(imap_files(boom, range(12), 2))
    assert available_cpus() >= 1
