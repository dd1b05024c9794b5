"""Run a per-item function over many items on a local process pool, or on Ray Data when a cluster is set.

Stages hand over a *worker class* and a picklable config rather than a function: a worker holds an
expensive resource (an ONNX session) that must be built once per process, not once per image. The same
class runs as a process-pool initializer locally and as a Ray Data actor when ``RAY_ADDRESS`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

Item = dict[str, Any]
Result = dict[str, Any]
T = TypeVar("T")


class BatchWorker(Protocol):
    def __init__(self, config: Any) -> None: ...
    def __call__(self, items: list[Item]) -> list[Result]: ...


_WORKER: BatchWorker | None = None
# Items per Ray Data batch: each batch costs tens of ms of scheduling and pandas conversion, which at 16 items
# made align 2.4x slower than the pool at 10k photos (bench/ray_data_scale.py).
RAY_BATCH = 128


def _init(factory: Callable[[Any], BatchWorker], config: Any) -> None:
    global _WORKER
    _WORKER = factory(config)


def _run(items: list[Item]) -> list[Result]:
    assert _WORKER is not None, "process pool initializer did not run"
    return _WORKER(items)


def _chunks(seq: Sequence[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(seq), size):
        yield list(seq[start : start + size])


def default_workers(requested: int = 0) -> int:
    return requested if requested > 0 else max(1, len(os.sched_getaffinity(0)))


def parallel_map(
    factory: type[BatchWorker],
    config: Any,
    items: Sequence[Item],
    *,
    workers: int = 0,
    chunk_size: int = 16,
    desc: str = "",
    shared: dict[str, Path] | None = None,
) -> list[Result]:
    """Apply ``factory(config)`` to ``items`` in chunks, preserving order; shows a progress bar."""
    if not items:
        return []
    if os.environ.get("RAY_ADDRESS"):
        return _ray_map(factory, config, items, chunk_size=chunk_size, shared=shared or {})
    n = min(default_workers(workers), max(1, len(items) // chunk_size))
    results: list[Result] = []
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=None)
    if n == 1:
        worker = factory(config)
        for chunk in _chunks(items, chunk_size):
            results.extend(worker(chunk))
            bar.update(len(chunk))
    else:
        with ProcessPoolExecutor(max_workers=n, initializer=_init, initargs=(factory, config)) as pool:
            for chunk, out in zip(_chunks(items, chunk_size), pool.map(_run, _chunks(items, chunk_size)), strict=True):
                results.extend(out)
                bar.update(len(chunk))
    bar.close()
    return results


def _ray_map(factory: type[BatchWorker], config: Any, items: Sequence[Item], *, chunk_size: int,
             shared: dict[str, Path]) -> list[Result]:
    """Same contract on a Ray cluster: actors build the worker once, Ray Data streams the batches. The actors
    run on other nodes, in other folders: ``config`` must name absolute paths, and ``shared`` (params key ->
    folder) the folders they read or write, which every node must see (checked first)."""
    import pandas as pd
    import ray

    from components.ray_cluster import check_shared, connect

    connect()
    for setting, folder in shared.items():
        check_shared([folder], setting)

    class _Actor:
        def __init__(self) -> None:
            self.worker = factory(config)

        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            out = pd.DataFrame(self.worker(batch.drop(columns="_order").to_dict("records")))
            out["_order"] = batch["_order"].to_numpy()
            return out

    indexed = [dict(item, _order=i) for i, item in enumerate(items)]
    batch = max(chunk_size, RAY_BATCH)
    actors = max(1, min(int(ray.cluster_resources().get("CPU", 1)), len(items) // batch))
    ds = ray.data.from_items(indexed).map_batches(_Actor, batch_size=batch, batch_format="pandas", concurrency=actors)
    rows = ds.to_pandas().sort_values("_order").drop(columns="_order")
    return rows.to_dict("records")
