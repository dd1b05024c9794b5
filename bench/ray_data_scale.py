"""[M] Preprocessing on Ray Data vs. the local process pool at 10k photos: the same outputs, and the throughput.

Two scratch DVC projects on bench/data_scale.py's scale corpus (hard-linked; synthetic identities: fine for
cost, not for accuracy): in one, ``dvc repro -s`` runs detect, align, quality_filter and pack on the process
pool; in the other, the same commands run with ``RAY_ADDRESS`` set to a two-node Ray cluster on 127.0.0.1 (two
raylets of 1 CPU each, token authentication, as a team runs one), so detect, align and quality_filter run as
Ray Data actors spread over both nodes (components/executor.py). Both share this machine's 2 cores: the
comparison measures what Ray Data costs over the pool on the same hardware, not what more hardware buys.

Every file of every stage's output is compared by SHA-256, except what records its own run (NOT_COMPARED).
Whole commands are timed, as a user runs them. Writes ``reports/bench/ray_data_scale.json``.
``python -m bench.ray_data_scale [PHOTOS]`` (default 10,000).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from bench.data_scale import DVC, STAGES, WORK, _outputs, _project, _stages
from bench.ray_two_nodes import loopback_cluster
from bench.stage_command import measure_command
from tests.servers import server_env

OUT = Path(__file__).parents[1] / "reports/bench/ray_data_scale.json"
NOT_COMPARED = {"data/quality/data_docs/": "Great Expectations' data docs record when the validation ran",
                "reports/": "each stage's report records its own seconds",
                "data/detect_cache/hashes.parquet": "a memo of this checkout's file mtimes (dvc add rewrites them)"}


def _run(root: Path, photos: int, env: dict[str, str]) -> dict[str, Any]:
    """Each stage as a whole ``dvc repro -s`` command (bench/data_scale.py's row), with photos per second. On Ray
    the peak RSS is the driver's alone: the actors run under the raylets, not under the command."""
    return {stage: row | {"photos_per_s": round(photos / row["seconds"], 2)}
            for stage, row in _stages(root, photos, env).items()}


def _digests(root: Path) -> dict[str, str]:
    """SHA-256 of every output file of the stages, by path in the project."""
    digests = {}
    for stage in STAGES:
        for out in _outputs(root, stage):
            target = root / out
            files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
            for path in files:
                name = path.relative_to(root).as_posix()
                if not name.startswith(tuple(NOT_COMPARED)):
                    digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _compare(pool: dict[str, str], ray: dict[str, str]) -> dict[str, Any]:
    differing = sorted(k for k in pool.keys() & ray.keys() if pool[k] != ray[k])
    return {"files": len(pool), "identical": len(pool) - len(differing) - len(pool.keys() - ray.keys()),
            "differing": differing[:20], "only_pool": sorted(pool.keys() - ray.keys())[:20],
            "only_ray": sorted(ray.keys() - pool.keys())[:20], "byte_identical": pool == ray}


def measure(photos: int) -> dict[str, Any]:
    env = {k: v for k, v in server_env().items() if k != "RAY_ADDRESS"}
    pool_root = _project(photos, "pool")
    measure_command([*DVC, "add", "-q", "data/raw"], pool_root, env=env)
    report: dict[str, Any] = {"photos": photos, "machine": f"{len(os.sched_getaffinity(0))} CPU cores",
                              "pool": _run(pool_root, photos, env)}
    ray_root = _project(photos, "ray_data")
    measure_command([*DVC, "add", "-q", "data/raw"], ray_root, env=env)
    cluster_env = env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    with loopback_cluster([1, 1], cluster_env, WORK / "ray_data_logs") as (address, _):
        report["ray_data"] = _run(ray_root, photos, cluster_env | {"RAY_ADDRESS": address})
    report["cluster"] = "two raylets on 127.0.0.1, 1 CPU each"
    report["ray_vs_pool"] = {stage: round(report["pool"][stage]["seconds"] / report["ray_data"][stage]["seconds"], 3)
                             for stage in STAGES}
    report["outputs"] = _compare(_digests(pool_root), _digests(ray_root))
    report["not_compared"] = NOT_COMPARED
    return report


def main() -> None:
    report = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
