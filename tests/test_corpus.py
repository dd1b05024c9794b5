"""[M] The scale corpus: deterministic whatever the worker count, a larger corpus extends a smaller one, hostile
files at the configured rate, written by `faceforge sample` with ``data.corpus_photos``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from typer.testing import CliRunner

from components.sample.corpus import CorpusConfig, write_corpus
from faceforge.cli import app


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_corpus_is_the_same_bytes_with_one_or_two_workers_and_grows_by_extension(tmp_path: Path) -> None:
    config = CorpusConfig(photos=48, identities=5, hostile_fraction=0.1)
    one = write_corpus(tmp_path / "one", config, workers=1)
    two = write_corpus(tmp_path / "two", config, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two") and one == two
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [f"id{i:07d}" for i in range(5)]
    assert one["photos"] == 48 and sum(one["kinds"].values()) == 48 and 0 < 48 - one["kinds"]["photo"] < 15
    big = write_corpus(tmp_path / "big", CorpusConfig(photos=60, identities=5, hostile_fraction=0.1))
    bigger = _files(tmp_path / "big")
    assert {k: v for k, v in bigger.items() if k in _files(tmp_path / "one")} == _files(tmp_path / "one")
    added = write_corpus(tmp_path / "one", CorpusConfig(photos=60, identities=5, hostile_fraction=0.1), start=48)
    assert added["photos"] == 12 and _files(tmp_path / "one") == bigger  # new photos arriving: the same files
    # photos decode, vary in size and quality, and are not all the same picture
    decoded = [cv2.imdecode(np.frombuffer(v, np.uint8), cv2.IMREAD_COLOR) for v in bigger.values() if v]
    photos = [p for p in decoded if p is not None and p.shape == (360, 480, 3)]
    assert len(photos) == big["kinds"]["photo"]  # every photo decodes; the hostile files are the rest
    assert len({int(p.mean()) for p in photos}) > 10


def test_faceforge_sample_writes_a_corpus_of_the_asked_size(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("data:\n  raw_dir: raw\n  corpus_photos: 30\n  corpus_identities: 3\n")
    done = CliRunner().invoke(app, ["sample"])
    assert done.exit_code == 0, done.output
    assert len([p for p in Path("raw").rglob("*") if p.is_file()]) == 30
    assert json.loads(Path("reports/sample.json").read_text())["corpus"]["identities"] == 3
