"""[H] dvc.yaml declares params key by key: a setting that cannot change a result reruns nothing, one that can
reruns its stage and everything after it. The real dvc.yaml and params.yaml, with every output present and
committed to dvc.lock (as after a `dvc repro`, without minutes of real stages: what is checked is what DVC
would rerun)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from flows.lock import in_workspace
from pipelines.params import DetectParams, EvalParams, TrainParams, runtime_settings

REPO = Path(__file__).parents[1]
AFTER_TRAIN = ["train", "export", "eval", "quantize", "publish"]


def _touch(path: Path) -> None:
    if path.exists():
        return
    if path.suffix:  # a file output (detections.parquet, eval.json, ...)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{path.name}\n")
    else:  # a folder output (data/train, data/aligned, ...)
        path.mkdir(parents=True, exist_ok=True)
        (path / "placeholder").write_text("x\n")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dvc.repo import Repo

    root = tmp_path_factory.mktemp("dvc")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipelines", "components"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    with in_workspace(root), Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for item in [*stage.deps, *stage.outs]:
                _touch(Path(item.fs_path))
        (root / "data" / "import" / "model.onnx").write_text("x\n")  # what import_model writes, as one file
        repo.commit(force=True)
    return root


@pytest.fixture
def params(pipeline: Path) -> Iterator[Path]:
    original = (pipeline / "params.yaml").read_text()
    yield pipeline / "params.yaml"
    (pipeline / "params.yaml").write_text(original)


def _would_run(root: Path) -> list[str]:
    """The stages `dvc repro` would run: those whose own deps or params changed (its dry run), and every
    stage downstream of them (whose inputs those runs will rewrite), in pipeline order."""
    import networkx as nx
    from dvc.repo import Repo

    with in_workspace(root), Repo(str(root)) as repo:
        stale = repo.reproduce(dry=True)
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        rerun = {s.name for s in stale} | {d.name for s in stale for d in nx.ancestors(graph, s)}
        return [s.name for s in repo.index.stages if s.name in rerun]


def _set(path: Path, dotted: str, value: object) -> None:
    tree = yaml.safe_load(path.read_text())
    section, key = dotted.split(".")
    tree[section][key] = value
    path.write_text(yaml.safe_dump(tree, sort_keys=False))


def test_dvc_yaml_declares_every_result_setting_and_no_runtime_setting() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, section, cls in (("detect", "detect", DetectParams), ("train", "train", TrainParams),
                                ("eval", "eval", EvalParams)):
        declared = {p.split(".", 1)[1] for p in stages[stage]["params"] if p.startswith(f"{section}.")}
        assert declared == set(cls.model_fields) - runtime_settings(cls), stage


def test_nothing_is_stale_after_the_pipeline_ran(pipeline: Path) -> None:
    assert _would_run(pipeline) == []


@pytest.mark.parametrize("setting", ["train.loader_workers", "train.checkpoint_every", "train.max_failures",
                                     "train.replica_check_every", "eval.batch_size", "eval.loader_workers",
                                     "detect.workers"])
def test_a_runtime_setting_reruns_nothing(params: Path, pipeline: Path, setting: str) -> None:
    _set(params, setting, 7)
    assert _would_run(pipeline) == []


def test_a_training_setting_reruns_train_and_everything_after_it(params: Path, pipeline: Path) -> None:
    _set(params, "train.lr", 0.01)
    assert _would_run(pipeline) == AFTER_TRAIN


def test_another_start_model_reruns_the_import_and_everything_trained_from_it(params: Path, pipeline: Path) -> None:
    _set(params, "import_model.source", "w600k_r50.onnx")
    assert _would_run(pipeline) == ["import_model", *AFTER_TRAIN]


def test_continuing_from_a_registered_version_reruns_the_warm_start_and_everything_trained_from_it(
        params: Path, pipeline: Path) -> None:
    from flows.warm_start import Start, pin

    assert pin(params, Start(3, "0" * 32 + ".dir", "continues from version 3"))
    assert _would_run(pipeline) == ["warm_start", *AFTER_TRAIN]
    assert not pin(params, Start(3, "0" * 32 + ".dir", "again"))  # the same start changes nothing


def test_serving_the_imported_model_as_it_is_needs_no_training(params: Path, pipeline: Path) -> None:
    from flows.dvc_stages import needed_stages

    _set(params, "export.model", "data/import/model.onnx")
    assert _would_run(pipeline) == ["export", "eval", "quantize", "publish"]
    assert "train" not in needed_stages(pipeline) and "import_model" in needed_stages(pipeline)


def test_push_then_a_fresh_clone_at_the_run_commit_pulls_every_output(tmp_path: Path) -> None:
    """The local-folder remote: run (here: committed outputs), push, commit the run, clone, pull, compare."""
    from dvc.repo import Repo

    from components.io.checksums import sha256_file
    from flows.versioning import commit_run, push, set_remote

    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipelines", "components"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    with in_workspace(root), Repo(str(root)) as repo:  # inputs no stage produces
        produced = {out.fs_path for stage in repo.index.stages for out in stage.outs}
        for stage in repo.index.stages:
            for item in stage.deps:
                if not any(item.fs_path == o or item.fs_path.startswith(o + "/") for o in produced):
                    _touch(Path(item.fs_path))
    for raw in ("data/raw", "data/eval_sets"):  # the photos: `dvc add`, as `make demo` does
        subprocess.run([sys.executable, "-m", "dvc", "add", "-q", raw], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "code"], cwd=root, check=True)
    with in_workspace(root), Repo(str(root)) as repo:  # what `dvc repro` leaves
        for stage in repo.index.stages:
            for item in [*stage.deps, *stage.outs]:
                _touch(Path(item.fs_path))
        repo.commit(force=True)
    storage = tmp_path / "storage"
    assert set_remote(root, str(storage))["config"] == ".dvc/config.local"  # per machine, not committed
    pushed = push(root)
    assert pushed["remote"] == "local" and pushed["pushed"] > 0
    commit = commit_run(root, "faceforge/runs/first", "faceforge run: dvc.lock + metrics")
    assert subprocess.run(["git", "status", "--porcelain", "--", "dvc.lock"], cwd=root, capture_output=True,
                          text=True).stdout.startswith("??")  # the working tree and index are untouched

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "--local", "-d", "local", str(storage)],
                   cwd=clone, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "pull", "-q"], cwd=clone, check=True)
    for path in ("data/export/model.onnx", "data/packed/placeholder", "data/raw/placeholder"):
        assert sha256_file(clone / path) == sha256_file(root / path), path
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=clone, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
