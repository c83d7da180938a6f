"""The one cache helper (sophon.analysis.BuildOnceCache) behind the dataset analysis's per-jet
values and class sums and the app's shared datasets, derived objects and results."""

from __future__ import annotations

import threading
import time

import pytest

from sophon.analysis import BuildOnceCache


def test_concurrent_first_requests_wait_for_one_build():
    cache = BuildOnceCache()
    builds = []

    def build():
        builds.append(threading.get_ident())
        time.sleep(0.2)
        return "value"

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_build("k", build)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["value"] * 8 and len(builds) == 1


def test_least_recently_used_entries_go_first():
    cache = BuildOnceCache(size=2)
    cache["a"], cache["b"] = 1, 2
    assert cache["a"] == 1  # a is now the most recently used
    assert cache.get_or_build("c", lambda: 3) == 3
    assert "b" not in cache and "a" in cache and len(cache) == 2
    assert cache.get_or_build("a", lambda: pytest.fail("a is cached")) == 1


def test_a_failed_build_stores_nothing_and_is_retried():
    cache = BuildOnceCache()

    def fail():
        raise ValueError("no")

    with pytest.raises(ValueError):
        cache.get_or_build("k", fail)
    assert "k" not in cache and cache.get("k") is None
    assert cache.get_or_build("k", lambda: 5) == 5
    cache.clear()
    assert len(cache) == 0 and cache.items() == []
