"""Which start a retrain takes: the champion's train output (a warm retrain) or ``train.init_from`` (a full one).

The registry is read here, before ``dvc repro``, and the answer is pinned into ``params.yaml``
(``warm_start.version`` + ``warm_start.train_md5``, the DVC md5 of that version's train output from its run's
dvc.lock): the warm_start stage then copies that output from DVC's cache. So the start is a versioned input --
the run commit holds the pin, the DVC remote holds the content -- and a clone of the run commit + ``dvc pull``
reproduces the model without asking the registry (docs/training.md, "Retrain warm").

A warm retrain needs the champion's backbone and embedding size to be the ones train asks for; every
``orchestration.full_retrain_every``-th generation, or on demand (``faceforge retrain --full``), the retrain
starts from ``train.init_from`` again, so what warm runs drift into never compounds without a check.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows.lineage import dvc_lock_text, resolve_version
from pipelines.params import Params
from pipelines.warm_start import cached_directory

WARM_GENERATION = "warm_generation"  # version tag: warm retrains since the last full one (0 = full)
PARENT_VERSION = "parent_version"  # version tag: the version a warm retrain continued from


@dataclass(frozen=True)
class Start:
    version: int | None  # None: train.init_from
    train_md5: str | None
    reason: str
    commit: str | None = None  # the version's run commit, where DVC can fetch its outputs


def full(reason: str) -> Start:
    return Start(None, None, reason)


def _trained_config(client: Any, run_id: str) -> dict[str, Any] | None:
    """The train stage's model.json the version's run logged (backbone, embedding size), or None."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return json.loads(Path(client.download_artifacts(run_id, "train/model.json", tmp)).read_text())
        except Exception:  # noqa: BLE001 - an artifact that is not there, in any store's way of saying so
            return None


def train_output_md5(client: Any, params: Params, version: Any) -> str:
    """DVC's md5 of the version's train output, from the dvc.lock its run recorded (checked against its SHA-256)."""
    lock = yaml.safe_load(dvc_lock_text(client, params, str(version.version)))
    outs = lock.get("stages", {}).get("train", {}).get("outs", [])
    for out in outs:
        if Path(out["path"]) == Path(params.train.out_dir):
            return str(out["md5"])
    raise ValueError(f"version {version.version}: its run's dvc.lock has no train output {params.train.out_dir}")


def continue_from(client: Any, params: Params, version: Any) -> Start:
    """A warm start from ``version`` when it can be one, else a full start saying why not."""
    trained = _trained_config(client, version.run_id)
    if trained is None:
        return full(f"version {version.version}: its run logged no train/model.json")
    asked = (params.train.backbone, params.train.embedding_size)
    if (trained["backbone"], int(trained["embedding_size"])) != asked:
        return full(f"version {version.version} is a {trained['backbone']} {trained['embedding_size']}-d model, "
                    f"train asks for {asked[0]} {asked[1]}-d")
    if not version.tags.get("dvc_lock_sha256"):
        return full(f"version {version.version} has no recorded dvc.lock")
    return Start(int(version.version), train_output_md5(client, params, version),
                 f"continues from version {version.version}", version.tags.get("dvc_commit"))


def plan(client: Any, params: Params, full_retrain: bool) -> Start:
    """The scheduled retrain's choice: warm from the champion unless asked, configured or due otherwise."""
    o = params.orchestration
    if full_retrain:
        return full("a full retrain was asked for")
    if not o.warm_start:
        return full("orchestration.warm_start is off")
    try:
        champion = resolve_version(client, params, params.mlflow.champion_alias)
    except Exception:  # noqa: BLE001 - MLflow's "alias not found"
        return full(f"no version holds the {params.mlflow.champion_alias!r} alias yet")
    generation = int(champion.tags.get(WARM_GENERATION, "0"))
    if generation + 1 >= o.full_retrain_every:
        return full(f"version {champion.version} is warm generation {generation}; orchestration.full_retrain_every "
                    f"is {o.full_retrain_every}")
    return continue_from(client, params, champion)


def lineage_tags(client: Any, params: Params, start: dict[str, Any] | None) -> dict[str, str]:
    """The version tags naming a warm retrain's parent and its generation (0 for a full retrain)."""
    parent = (start or {}).get("version")
    if parent is None:
        return {WARM_GENERATION: "0"}
    generation = int(client.get_model_version(params.mlflow.registered_model, str(parent)).tags.get(
        WARM_GENERATION, "0"))
    return {PARENT_VERSION: str(parent), WARM_GENERATION: str(generation + 1)}


def pin(params_file: Path, start: Start) -> bool:
    """Write the start into ``params_file``'s ``warm_start`` section, comments kept; True when it changed."""
    from ruamel.yaml import YAML

    loader = YAML()
    loader.preserve_quotes = True
    text = Path(params_file).read_text()
    data = loader.load(text)
    section = data.setdefault("warm_start", {})
    if (section.get("version"), section.get("train_md5")) == (start.version, start.train_md5):
        return False
    section["version"], section["train_md5"] = start.version, start.train_md5
    tmp = Path(params_file).with_name(f".{Path(params_file).name}.tmp")
    with tmp.open("w") as out:
        loader.dump(data, out)
    tmp.replace(params_file)
    return True


def ensure_cached(start: Start) -> None:
    """Have the version's train output in the local DVC cache: fetched from the DVC remote at its run commit when
    this workspace did not train it."""
    if start.version is None:
        return
    _, entries, missing = cached_directory(str(start.train_md5))
    if entries is not None and not missing:
        return
    if not start.commit:
        raise FileNotFoundError(f"version {start.version}'s train output ({start.train_md5}) is not in DVC's cache "
                                "and the version names no run commit to fetch it at")
    from dvc.repo import Repo

    Repo(".").fetch(targets=["train"], revs=[start.commit], workspace=False)


def choose(client: Any, params: Params, ref: str) -> Start:
    """``faceforge continue-from REF``: ``none`` (start from train.init_from), ``champion`` (any alias) or a number."""
    if ref == "none":
        return full("asked for train.init_from")
    version = resolve_version(client, params, ref)
    start = continue_from(client, params, version)
    if start.version is None:
        raise ValueError(f"cannot continue from {ref}: {start.reason}")
    return start

