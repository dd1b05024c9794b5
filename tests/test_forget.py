"""[Q] ``faceforge forget IDENTITY``: the person is gone from the workspace, DVC's cache and remote and the
gallery, in this version and in the older ones the stores kept; nobody else's data is touched.

A team's checkout (git + DVC, a folder remote) with two versions of the data up to ``pack`` (the crops made
again with another JPEG quality: two generations of crops and packed sets in the cache and the remote), and
a gallery where the person and someone else are enrolled. The search after the forget is this test's own: every
file of every store, as bytes, as text and as the string values of a Parquet table, for the SHA-256 of each of
the person's photos and crops; and their identity in the current stage outputs."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.erasure.receipt import Receipt, append_receipt, photo_digest, subject_digest, verify_log
from components.recordio.format import MAGIC, scan_records, unpack_header
from tests.test_end_to_end import _edit_yaml, _git

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

REPO = Path(__file__).parents[1]
PERSON, OTHER = "orl_s02", "orl_s03"
SMALL = {"data": {"sample_identities": 6, "sample_images_per_identity": 4, "eval_identities": 4,
                  "eval_templates_per_identity": 3, "eval_bin_pairs": 20, "second_face_fraction": 0.0},
         "quality_filter": {"min_identities": 2}}
FACEFORGE = str(Path(sys.executable).parent / "faceforge")


def _dvc(root: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"dvc {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def _crops(root: Path, identity: str) -> set[str]:
    manifest = pd.read_parquet(root / "data" / "aligned" / "manifest.parquet")
    return {hashlib.sha256((root / "data" / "aligned" / p).read_bytes()).hexdigest()
            for p in manifest[manifest.identity == identity].aligned_path}


class _InProcessEmbedder:
    """The photo-in model's own detection, alignment and an ONNX embedder, in this process (the gallery over a
    real Triton: tests/test_gallery.py)."""

    def __init__(self, root: Path, model: Path) -> None:
        from components.evaluation.embedders import OnnxEmbedder
        from components.io.checksums import sha256_file
        from components.serving.photo import PhotoFaces
        from pipelines.params import load_params
        from pipelines.publish import pipeline_spec

        spec = pipeline_spec(load_params(root / "params.yaml"))
        assert spec is not None
        self.faces, self.embedder, self.sha = PhotoFaces(spec.detector, spec.photo), OnnxEmbedder(model), \
            sha256_file(model)

    def embed(self, photos: list[bytes], crops: bool = False) -> list[Any]:
        from components.serving.client import PhotoEmbedding

        out = []
        for photo in photos:
            face = self.faces(photo)
            vector = self.embedder(face.crop[None])[0]
            out.append(PhotoEmbedding("ok", "", vector / np.linalg.norm(vector), face.bbox, face.landmarks,
                                      face.score, face.faces, face.crop, self.sha, "1"))
        return out

    def thresholds(self) -> dict[str, float | None]:
        return {}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("team") / "project"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipelines", "components", "flows"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    _edit_yaml(root / "params.yaml", SMALL)
    _git(root, "init", "-q")
    _dvc(root, "init", "-q")
    subprocess.run([FACEFORGE, "sample"], cwd=root, check=True, capture_output=True)
    remote = root.parent / "remote"
    _dvc(root, "remote", "add", "-d", "store", str(remote))
    _dvc(root, "add", "-q", "data/raw", "data/eval_sets")
    crops = set()
    for quality in (95, 90):  # two generations of crops and packed sets, both pushed
        _edit_yaml(root / "params.yaml", {"align": {"jpeg_quality": quality}})
        _dvc(root, "repro", "-q", "pack")
        _dvc(root, "push", "-q")
        _git(root, "add", "-A")
        _git(root, "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-qm", f"crops {quality}")
        crops |= _crops(root, PERSON)
    from components.gallery.gallery import Gallery
    from tests.test_gallery import _embedder

    embedder = _InProcessEmbedder(root, _embedder(root.parent / "embedder.onnx", 0))
    gallery = Gallery(f"sqlite:///{root / 'gallery' / 'gallery.db'}", str(root / "gallery" / "crops"))
    for who in (PERSON, OTHER):
        photos = sorted((root / "data" / "raw" / who).glob("*.jpg"))[:2]
        gallery.enrol(who, [(p.name, p.read_bytes()) for p in photos], embedder)
    photos = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "data" / "raw" / PERSON).glob("*")}
    yield {"root": root, "remote": remote, "photos": photos, "crops": crops, "gallery": gallery}


def _files(root: Path) -> Iterator[Path]:
    yield from (p for p in root.rglob("*") if p.is_file() and ".git" not in p.relative_to(root).parts[:1])


def _traces(path: Path, digests: set[str]) -> list[str]:
    """What in this file is or names the person: one of their photos or crops (``digests``), a text or a
    table's strings naming one of those SHA-256 (or the 20-character prefix a crop file is named by) or a file
    of their folder, a table whose ``identity`` column lists them, a RecordIO file packing one of their faces."""
    data = path.read_bytes()
    found = [f"{path} is {d}" for d in digests if hashlib.sha256(data).hexdigest() == d]
    found += [f"{path} contains {d}" for d in digests if d.encode() in data or d[:20].encode() in data]
    found += [f"{path} names a file of their folder"] if f"{PERSON}/".encode() in data else []
    if data[:4] == b"PAR1":
        table = pq.read_table(io.BytesIO(data))
        strings = " ".join(str(v) for c in table.columns if str(c.type) == "string" for v in c.to_pylist())
        found += [f"{path} lists {d}" for d in digests if d in strings or d[:20] in strings]
        found += [f"{path} lists them"] if PERSON in (table.to_pydict().get("identity") or []) else []
    if data[:4] == struct.pack("<I", MAGIC):
        found += [f"{path} packs {d}" for record in scan_records(data, str(path))
                  if (d := hashlib.sha256(bytes(unpack_header(record)[1])).hexdigest()) in digests]
    if path.suffix in ("", ".csv") and data.startswith(b"label,identity,"):
        found += [f"{path} lists them"] if f",{PERSON},".encode() in data else []
    return found


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(root)}


def test_forget_removes_the_person_from_every_store_and_nothing_else(project: dict[str, Any], tmp_path: Path) -> None:
    root, remote = project["root"], project["remote"]
    digests = project["photos"] | project["crops"]
    stores = [root, remote]
    before = {store: _checksums(store) for store in stores}
    held = {store: {name for name in before[store] if _traces(store / name, digests)} for store in stores}
    assert held[root] and held[remote]  # the search finds them before: photos, crops, tables, in both
    others = {p.name: p.read_bytes() for p in (root / "data" / "raw").rglob("*.jpg") if PERSON not in p.parts}
    eval_sets = _checksums(root / "data" / "eval_sets")

    # interrupted halfway (the remote refuses the rebuilt version's push): one line, then the same command finishes
    _dvc(root, "remote", "modify", "store", "url", "/dev/null/remote")
    broken = subprocess.run([FACEFORGE, "forget", PERSON, "--yes"], cwd=root, capture_output=True, text=True,
                            timeout=600)
    said = [line for line in broken.stderr.splitlines() if line.startswith("faceforge forget:")]  # Prefect logs too
    assert broken.returncode == 1 and said == ["faceforge forget: DVC remote /dev/null/remote: not a writable "
                                               "folder (Not a directory)"], broken.stderr[-3000:]
    assert not (root / "data" / "raw" / PERSON).exists()  # the workspace step had run
    _dvc(root, "remote", "modify", "store", "url", str(remote))
    done = subprocess.run([FACEFORGE, "forget", PERSON, "--yes"], cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    receipt = Path(done.stdout.strip().splitlines()[-1])
    assert receipt.is_file() and receipt.parent == root / "erasures"

    # 1. nothing of theirs anywhere: workspace (stage outputs, caches), .dvc/cache, the remote, the gallery
    leftovers = [t for store in stores for p in _files(store) for t in _traces(p, digests)]
    assert not leftovers, leftovers[:10]
    outputs = [root / "data" / d for d in ("detect", "aligned", "quality", "packed")]
    named = [p for folder in outputs for p in folder.rglob("*") if p.is_file() and (
        PERSON.encode() in p.read_bytes() or (p.suffix == ".parquet" and PERSON in pd.read_parquet(p).to_string()))]
    assert not named, named
    assert not (root / "data" / "raw" / PERSON).exists()
    assert {f["identity"] for f in project["gallery"].list()} == {OTHER}
    # ... nor in the receipt, which names them by keyed digests only, in a log whose edits show
    assert not _traces(receipt, digests) and PERSON not in receipt.read_text()
    written = json.loads(receipt.read_text())
    assert written["subject"] == subject_digest(PERSON) and written["failed"] == []
    assert written["photos"] == sorted(photo_digest(sha) for sha in project["photos"])
    removed = {(r["store"], r["what"]): r["count"] for r in written["removals"]}
    assert removed[("workspace", "photos")] == 0  # the interrupted run had removed them: the rerun finished
    assert removed[("gallery", "faces and crops")] == 2 and removed[("dvc-remote", "objects")] > 0
    assert verify_log(receipt.parent) == []
    log, chained = receipt.parent / "receipts.jsonl", tmp_path / "erasures"  # an edit before a later receipt shows
    shutil.copytree(receipt.parent, chained)
    append_receipt(chained, Receipt("later", "s", [], [], [], [], []))
    (chained / log.name).write_text((chained / log.name).read_text().replace('"failed": []', '"failed": ["x"]', 1))
    assert verify_log(chained) == [f"{chained / log.name}:2: the log before this receipt was changed"]

    # 2. everyone else's data intact: their photos, the eval sets, and every object of the cache and the remote
    #    that held nothing of the person (the rebuilt version's new objects come beside them)
    assert {p.name: p.read_bytes() for p in (root / "data" / "raw").rglob("*.jpg")} == others
    assert _checksums(root / "data" / "eval_sets") == eval_sets
    for store in (root / ".dvc" / "cache", remote):
        prefix = "" if store == remote else ".dvc/cache/"
        untouched = {name: sha for name, sha in before[remote if store == remote else root].items()
                     if name.startswith(prefix) and name not in held[remote if store == remote else root]}
        after = {prefix + name: sha for name, sha in _checksums(store).items()}
        assert {name: after.get(name) for name in untouched} == untouched
    # the current version is whole: its outputs rebuilt without them, in the cache and pushed to the remote
    assert "up to date" in _dvc(root, "status", "pack")
    assert "in sync" in _dvc(root, "status", "--cloud", "pack")


def test_bad_requests_are_one_line_and_remove_nothing(project: dict[str, Any]) -> None:
    root = project["root"]
    before = _checksums(root / "data" / "raw")
    held_out = sorted(p.name for p in (root / "data" / "eval_sets" / "photos").iterdir())[0]
    for identity, says in (("nobody", "no such identity"), (held_out, "has photos in the eval sets")):
        done = subprocess.run([FACEFORGE, "forget", identity, "--yes"], cwd=root, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert says in done.stderr, done.stderr
    assert _checksums(root / "data" / "raw") == before
