"""Client threads for the serving benchmarks: the wall time of ``concurrency`` workers run together."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_concurrently(worker: Callable[[int], None], concurrency: int) -> float:
    """Start ``worker(k)`` for k in range(concurrency) at once; seconds until the last one returns."""
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start
