from __future__ import annotations

import pytest

from components.executor import parallel_map


class Square:
    def __init__(self, offset: int) -> None:
        self.offset = offset

    def __call__(self, items: list[dict]) -> list[dict]:
        return [{"y": item["x"] ** 2 + self.offset} for item in items]


ITEMS = [{"x": i} for i in range(50)]
EXPECTED = [{"y": i * i + 1} for i in range(50)]


def test_process_pool_keeps_order() -> None:
    assert parallel_map(Square, 1, ITEMS, workers=2, chunk_size=4) == EXPECTED


def test_ray_data_runs_the_same_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a throwaway local cluster stands in for a real one
    try:
        out = parallel_map(Square, 1, ITEMS, chunk_size=8)
    finally:
        ray.shutdown()
    assert [{"y": int(r["y"])} for r in out] == EXPECTED
