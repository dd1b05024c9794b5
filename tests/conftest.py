from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from components.sample.raw_photos import SampleConfig, write_sample_raw

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def sample_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic raw-photo folder from the bundled real faces: 8 people x 6 photos."""
    root = tmp_path_factory.mktemp("sample") / "raw"
    write_sample_raw(root, SampleConfig(identities=8, images_per_identity=6, seed=3))
    return root


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
