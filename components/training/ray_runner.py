"""Run ``train_worker`` on Ray Train: a fresh local Ray by default, a cluster when ``RAY_ADDRESS`` is set.

Where the run lives (``storage``): a folder, or ``s3://bucket/prefix`` (pyarrow's S3 filesystem, honouring
``AWS_ENDPOINT_URL`` for MinIO), which every node of a multi-node cluster must reach. The caller names the run
after what determines its result, so a run whose driver died (Ctrl-C, OOM, reboot) is found again under the
same name and Ray Train resumes it from its last complete checkpoint by itself.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from components import env_defaults
from components.ray_cluster import check_shared, connect
from components.recordio.dataset import FaceRecordDataset
from components.training.config import TrainConfig
from components.training.local_process_group import local_torch_config
from components.training.loop import check_inputs, train_worker
from components.training.sessions import RaySession


@dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, Any]
    checkpoint: Any  # ray.train.Checkpoint: ``to_directory()`` gives a local copy wherever the storage is
    resumed_from_step: int | None  # the step an interrupted run with the same name was resumed from


def _worker(config: dict[str, Any]) -> None:
    import logging

    from ray.train.v2._internal.execution import context

    # Every report's full repr at INFO, on a logger named after its file (outside RunConfig's level filter).
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    train_worker(config["cfg"], RaySession())


def storage_filesystem(storage: str) -> tuple[str, Any]:
    """(path for Ray, pyarrow filesystem or None): S3 through pyarrow with the environment's endpoint."""
    if not storage.startswith("s3://"):
        return str(Path(storage).resolve()), None
    from pyarrow import fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    options: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint)
        options |= {"endpoint_override": parsed.netloc, "scheme": parsed.scheme or "http"}
    return storage.removeprefix("s3://").strip("/"), fs.S3FileSystem(**options)


def latest_checkpoint_step(storage: str, name: str) -> int | None:
    """The step of the newest complete checkpoint an earlier run with this name left, if any."""
    import pyarrow.fs as pafs

    path, filesystem = storage_filesystem(storage)
    filesystem = filesystem or pafs.LocalFileSystem()
    run = f"{path}/{name}"
    try:
        entries = filesystem.get_file_info(pafs.FileSelector(run, allow_not_found=True))
    except OSError:
        return None
    steps = []
    for entry in entries:
        meta = f"{entry.path}/meta.json"
        if entry.type == pafs.FileType.Directory and filesystem.get_file_info(meta).type == pafs.FileType.File:
            import json

            with filesystem.open_input_stream(meta) as f:
                steps.append(int(json.loads(f.read())["step"]))
    return max(steps, default=None)


def delete_run(storage: str, name: str) -> None:
    import pyarrow.fs as pafs

    path, filesystem = storage_filesystem(storage)
    filesystem = filesystem or pafs.LocalFileSystem()
    if filesystem.get_file_info(f"{path}/{name}").type != pafs.FileType.NotFound:
        filesystem.delete_dir(f"{path}/{name}")


def trainer_class(local: bool) -> type:
    """Ray Train's ``TorchTrainer``; on a local instance, without its placement-group cleaner.

    The cleaner is a detached actor that asks the State API every second whether the run's controller is
    alive, to free the workers' placement group if the controller dies on a long-lived cluster. A local Ray
    instance lives and dies with this process, placement groups included, so there it only costs CPU; and
    when the instance shuts down while the cleaner is mid-query, its thread prints a traceback
    ("Exception in thread PlacementGroupCleanerMonitor") at the end of an otherwise clean run. On a cluster
    it stays. ``_create_default_callbacks`` is Ray Train v2's own hook (ray 2.60); where it is missing, the
    stock trainer is used unchanged."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    except ImportError:
        return TorchTrainer
    if not local or not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer

    class LocalTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            return [c for c in super()._create_default_callbacks()
                    if not isinstance(c, PlacementGroupCleanerCallback)]

    return LocalTorchTrainer


def run_on_ray(cfg: TrainConfig, storage: str | Path, name: str, resume_from: Path | None = None) -> TrainResult:
    from ray import LoggingConfig
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    # Workers do not share the driver's working directory; and bad inputs must fail here, once, rather
    # than in every worker and again on every FailureConfig retry.
    def absolute(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else None

    cfg = replace(cfg, data_dir=absolute(cfg.data_dir), out_dir=absolute(cfg.out_dir),
                  init_from=absolute(cfg.init_from), teacher_targets=absolute(cfg.teacher_targets),
                  warm_centres=absolute(cfg.warm_centres))
    check_inputs(cfg, FaceRecordDataset(cfg.data_dir), cfg.num_workers)
    storage = str(storage)
    connect()
    shared = [storage, cfg.data_dir] + [p for p in (cfg.init_from, cfg.teacher_targets, cfg.warm_centres) if p]
    check_shared(shared, "train.storage_path / pack.out_dir / train.init_from / train.out_dir (teacher targets)")
    resumed = latest_checkpoint_step(storage, name)
    if resumed is not None:
        print(f"resuming training run {name} from its checkpoint at step {resumed} in {storage}", flush=True)
    path, filesystem = storage_filesystem(storage)
    local = env_defaults.local_ray()
    trainer = trainer_class(local)(
        _worker,
        train_loop_config={"cfg": cfg},
        torch_config=local_torch_config(cfg.use_gpu) if local else None,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Transient resource-request timeouts on a busy machine come with tracebacks at WARNING.
            logging_config=LoggingConfig(encoding="TEXT", log_level="ERROR"),
        ),
        resume_from_checkpoint=Checkpoint.from_directory(str(resume_from)) if resume_from else None,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} finished without a checkpoint: {result.error}")
    return TrainResult(dict(result.metrics or {}), result.checkpoint, resumed)


def local_copy(checkpoint: Any, into: Path | None = None) -> Path:
    """The checkpoint as a local folder (downloaded from S3 when that is where it lives)."""
    return Path(checkpoint.to_directory(str(into) if into else tempfile.mkdtemp(prefix="faceforge-ckpt-")))
