from __future__ import annotations

import pytest

from components.executor import parallel_map
from components.io.images import ImageRejected


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


class RejectsOdd:
    def __init__(self, config: None) -> None:
        pass

    def __call__(self, items: list[dict]) -> list[dict]:
        if any(item["x"] % 2 for item in items):
            raise ImageRejected("unreadable", "odd.jpg", "cannot identify image file")
        return items


def test_a_workers_image_error_reaches_the_caller_whole() -> None:
    # It once failed to unpickle in the parent, which then saw only "BrokenProcessPool".
    with pytest.raises(ImageRejected) as err:
        parallel_map(RejectsOdd, None, [{"x": 2}, {"x": 4}, {"x": 5}, {"x": 6}], workers=2, chunk_size=1)
    assert (err.value.reason, err.value.detail) == ("unreadable", "odd.jpg: cannot identify image file")
