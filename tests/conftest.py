from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with a ``slow`` test first, the one allowed the longest run (its ``timeout`` marker) first of
    all; each module's tests in file order.

    `make test` runs two pytest-xdist workers, each taking the next whole module (``--dist loadscope``, so a
    module's fixtures are built once) in this order: the end-to-end test, which mostly waits on its servers,
    starts at once on one worker while the other goes through the rest, and the heavy modules go before the
    light ones, so that the two workers end together instead of one finishing a heavy module alone.

    This file imports nothing of faceforge at its top: xdist's controller loads it, and an import of
    ``components`` there would set the product's environment defaults (components/env_defaults.py) in the
    environment every worker inherits, as if the user had set them (tests/servers.server_env)."""
    def module(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]  # the scope --dist loadscope groups by

    def allowed_s(item: pytest.Item) -> float:
        marker = item.get_closest_marker("timeout")
        return float(marker.args[0]) if marker and marker.args else 0.0

    slow = {module(item) for item in items if item.get_closest_marker("slow")}
    longest: dict[str, float] = {}
    for item in items:
        longest[module(item)] = max(longest.get(module(item), 0.0), allowed_s(item))
    items.sort(key=lambda item: (module(item) not in slow, -longest[module(item)]))


@pytest.fixture(scope="session")
def sample_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic raw-photo folder from the bundled real faces: 8 people x 6 photos."""
    from components.sample.raw_photos import SampleConfig, write_sample_raw

    root = tmp_path_factory.mktemp("sample") / "raw"
    write_sample_raw(root, SampleConfig(identities=8, images_per_identity=6, seed=3))
    return root


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A throw-away Prefect API (temporary database) for tests that run flows, instead of the user's own.

    Prefect binds its console log handler to ``sys.stderr`` when ``prefect.main`` is first imported. Import
    it here, or a test whose first flow runs inside ``CliRunner.invoke`` binds it to that runner's stream,
    which is closed afterwards: the next command's Prefect logs then fail recursively."""
    import prefect.main  # noqa: F401
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run stages inside a scratch project folder (they write data/ and reports/ relative to it)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def raw_copy(sample_raw: Path, workdir: Path) -> Path:
    target = workdir / "data" / "raw"
    shutil.copytree(sample_raw, target)
    return target


@pytest.fixture(scope="session")
def eval_sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IJB-C-format mini set + verification .bin from 4 ORL subjects (the sample stage's generator, smaller)."""
    from components.sample.eval_sets import EvalSetConfig, write_eval_sets

    root = tmp_path_factory.mktemp("evalsets") / "sets"
    write_eval_sets(root, EvalSetConfig(subjects=(31, 32, 33, 34), templates_per_subject=5, bin_pairs=40, seed=1))
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained mbf saved exactly as the train stage saves one (backbone.pth + model.json)."""
    import json

    import torch

    from components.models import get_model

    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    torch.save(get_model("mbf", 128).eval().state_dict(), root / "backbone.pth")
    (root / "model.json").write_text(json.dumps({"backbone": "mbf", "embedding_size": 128}))
    return root


def reset_moto(endpoint: str) -> None:
    """moto keeps its buckets in process-wide state that every server in this process shares: start empty."""
    import httpx

    httpx.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 server on 127.0.0.1: a real S3 HTTP API that boto3 talks to over the network."""
    import boto3
    from moto.server import ThreadedMotoServer

    from components.serving.triton_server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    reset_moto(f"http://127.0.0.1:{port}")
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="models")
    yield boto3.client("s3")
    server.stop()
