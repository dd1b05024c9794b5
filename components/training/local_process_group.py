"""The workers' process group on a local Ray instance: rendezvous through a file, not a TCP store.

Ray Train's torch backend has rank 0 serve a ``TCPStore`` for the rendezvous, and PyTorch binds that server to
every interface (neither of its backends takes an address), so a local training run had a port open to the
network, held also by every data-loader process forked from rank 0. On one machine the workers share a
filesystem: a ``FileStore`` (``init_method="file://..."``) does the same rendezvous with no socket, and gloo's
own connections then use the node's address, 127.0.0.1 (components/env_defaults.py). On a cluster the stock
backend stays. Built on Ray Train's torch backend (ray 2.60): it only changes the ``init_method``.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any


def local_torch_config(use_gpu: bool) -> Any:
    """A ``TorchConfig`` whose process group meets through a file in a fresh temporary folder per start."""
    from dataclasses import dataclass

    import ray
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

    class FileStoreBackend(_TorchBackend):
        folder: str | None = None

        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            # a new folder per (re)start: a FailureConfig restart never meets a previous attempt's store
            self.folder = tempfile.mkdtemp(prefix="faceforge-process-group-")
            worker_group.execute(_set_torch_distributed_env_vars)
            ray.get([worker_group.execute_single_async(
                rank, _setup_torch_process_group, backend="nccl" if use_gpu else "gloo", world_rank=rank,
                world_size=len(worker_group), init_method=f"file://{self.folder}/store",
                timeout_s=backend_config.timeout_s) for rank in range(len(worker_group))])

        def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
            super().on_shutdown(worker_group, backend_config)
            if self.folder:
                shutil.rmtree(self.folder, ignore_errors=True)

    @dataclass
    class LocalTorchConfig(TorchConfig):
        @property
        def backend_cls(self) -> type:
            return FileStoreBackend

    return LocalTorchConfig()
