"""``faceforge forget IDENTITY``: a person removed from every store faceforge writes, with a receipt.

The promotion of a forget is a short list of named steps, each its own Prefect task (docs/data_protection.md):

1. **plan**: the person's photos (their identity folder) and the crops made of them; a bad request (an unknown
   identity, a person whose photos are in the eval sets) is refused here, before anything is touched. The plan
   is kept until the forget ends, so an interrupted forget is finished by running it again;
2. **workspace**: their photo folder and their rows of the content-addressed detection cache;
3. **rebuild**: ``data.raw_dir``'s DVC entry and the stages up to ``pack`` rebuilt without them (incremental:
   nobody else's photo is detected or aligned again), and pushed when a remote is configured;
4. **dvc**: every object of DVC's local cache and remote that holds their face (components/erasure/target.py:
   their photos and crops, the tables and listings that name them, each packed ``train.rec`` with their crops),
   except one that a current file of someone else still needs (named in the receipt, never deleted);
5. **gallery**: their faces, templates and crops;
6. **receipt**: appended to ``forget.receipts_dir`` (hashes only) and printed.

What a forget cannot take back: a model's weights learned from a person until the next full retrain.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task

from components.erasure.receipt import (
    Receipt,
    Removal,
    append_receipt,
    new_receipt_id,
    photo_digest,
    subject_digest,
)
from components.erasure.target import Target
from components.io.checksums import sha256_file
from flows.lock import locked_workspace
from pipelines.detect import CACHE_DIR
from pipelines.params import Params

PENDING = ".pending"  # inside forget.receipts_dir: the plans of forgets not finished yet
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")


class ForgetRefused(ValueError):
    """A request that cannot be carried out as asked; nothing was removed."""


@dataclass
class Plan:
    target: Target
    receipt_id: str
    removals: list[Removal] = field(default_factory=list)
    kept_shared: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _pending_path(params: Params, identity: str) -> Path:
    return params.forget.receipts_dir / PENDING / f"{subject_digest(identity)}.json"


def request(identity: str, params: Params) -> Plan:
    """The person as the stores know them, from their photo folder, or the plan an interrupted forget kept; a
    bad request is refused here, before any server starts or anything is removed (also before the flow runs:
    faceforge/cli.py)."""
    pending = _pending_path(params, identity)
    if pending.is_file():
        kept = json.loads(pending.read_text())
        return Plan(Target(identity, set(kept["photos"]), set(kept["crops"])), kept["receipt_id"],
                    notes=["finished a forget that had been interrupted"])
    if not identity or "/" in identity or identity.startswith("."):
        raise ForgetRefused(f"{identity!r} is not an identity folder name (nothing removed)")
    folder = params.data.raw_dir / identity
    photos = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    target = Target(identity, {sha256_file(p) for p in photos})
    _refuse_eval_sets(target, params)
    if not photos:
        raise ForgetRefused(f"{identity}: no such identity in {params.data.raw_dir} (nothing removed)")
    return Plan(target, new_receipt_id())


@task(name="forget:plan")
def plan(identity: str, params: Params) -> Plan:
    """:func:`request`, with the crops made of their photos, kept until the forget ends."""
    plan_ = request(identity, params)
    pending = _pending_path(params, identity)
    if not pending.is_file():
        plan_.target.crops |= _crops_of(plan_.target, params)
        pending.parent.mkdir(parents=True, exist_ok=True)
        pending.write_text(json.dumps({"receipt_id": plan_.receipt_id, "photos": sorted(plan_.target.photos),
                                       "crops": sorted(plan_.target.crops)}))
    return plan_


def _refuse_eval_sets(target: Target, params: Params) -> None:
    """Held-out people measure every version: they leave the eval sets by a decision of their own (the sets are
    versioned data, docs/data_protection.md), never as a side effect. Their raw photos are
    ``eval.reference_photos``'s ``<identity>/`` folders; a training photo byte-identical to one is theirs too."""
    root = params.eval.reference_photos
    if root is None or not Path(root).is_dir():
        return
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and (target.owns_path(path.relative_to(root).as_posix())
                               or sha256_file(path) in target.photos):
            raise ForgetRefused(f"{target.identity} has photos in the eval sets ({path}): remove them from the "
                                "eval sets first (nothing removed)")


def _crops_of(target: Target, params: Params) -> set[str]:
    """SHA-256 of the aligned crops made of their photos (the crops themselves, while the workspace has them)."""
    import pandas as pd

    manifest = params.align.out_dir / "manifest.parquet"
    if not manifest.is_file():
        return set()
    rows = pd.read_parquet(manifest, columns=["sha256", "aligned_path"])
    paths = [params.align.out_dir / p for p in rows[rows.sha256.isin(target.photos)].aligned_path]
    return {sha256_file(p) for p in paths if p.is_file()}


@task(name="forget:workspace")
def remove_from_workspace(plan_: Plan, params: Params) -> None:
    """Their photo folder and their rows of the detection cache (which keeps rows of every photo it has seen)."""
    import pandas as pd

    from components.io.atomic import atomic_path

    folder = params.data.raw_dir / plan_.target.identity
    photos = sum(1 for p in folder.glob("*") if p.is_file()) if folder.is_dir() else 0
    if folder.is_dir():
        shutil.rmtree(folder)
    plan_.removals.append(Removal("workspace", str(params.data.raw_dir), "photos", photos))
    rows = 0
    for table in sorted(CACHE_DIR.glob("*.parquet")):
        frame = pd.read_parquet(table)
        keep = ~frame.sha256.isin(plan_.target.photos)
        if not keep.all():
            rows += int((~keep).sum())
            with atomic_path(table) as tmp:
                frame[keep].to_parquet(tmp, index=False)
    plan_.removals.append(Removal("workspace", str(CACHE_DIR), "detection cache rows", rows))


@task(name="forget:rebuild")
def rebuild(plan_: Plan, params: Params, root: Path) -> None:
    """The photo folder's DVC entry and every stage up to ``pack`` without them; pushed when a remote is set."""
    from dvc.repo import Repo

    from flows.dvc_stages import pipeline_stages, reproduce
    from flows.versioning import configured_remote, push

    raw_entry = Path(f"{params.data.raw_dir}.dvc")
    if (root / raw_entry).is_file():
        with Repo(str(root)) as repo:
            repo.add(str(params.data.raw_dir))
    stages = pipeline_stages(root)
    ran = [stage for stage in stages[:stages.index("pack") + 1] if reproduce(stage, root)]
    plan_.removals.append(Removal("workspace", "dvc.lock", f"stages rebuilt without them ({', '.join(ran)})",
                                  len(ran)))
    if configured_remote(root) is not None:
        push(root)


@task(name="forget:dvc")
def purge_dvc(plan_: Plan, root: Path) -> None:
    """Every object of the local cache and of the remote that holds their face, but none that a current file of
    someone else still needs."""
    from dvc.repo import Repo

    from flows.versioning import configured_remote

    with Repo(str(root)) as repo:
        needed = _current_objects(repo)
        stores = [("dvc-cache", str(repo.cache.local.path), repo.cache.local)]
        remote = configured_remote(root)
        if remote is not None:
            stores.append(("dvc-remote", remote[1], repo.cloud.get_remote_odb(remote[0], "forget")))
        for store, where, odb in stores:
            holding = _holding(plan_.target, odb)
            shared = sorted(holding & needed)
            plan_.kept_shared += [f"{store}: {oid} (still needed by a current file)" for oid in shared]
            removed = []
            for oid in sorted(holding - needed):
                try:
                    odb.delete(oid)
                    removed.append(oid)
                except OSError as exc:  # the other objects still go; the receipt and the exit code say so
                    plan_.failed.append(f"{store} {where}: object {oid}: {exc}")
            plan_.removals.append(Removal(store, where, "objects", len(removed), removed))
        # DVC's data index (in its site cache folder) lists every path it has seen, their folder's too: dropped
        # as a file (a deleted row would stay readable in SQLite's free pages); DVC builds it again when needed
        index = Path(repo.site_cache_dir) / "index"
    shutil.rmtree(index, ignore_errors=True)
    plan_.removals.append(Removal("dvc-index", str(index), "DVC's data index (rebuilt by DVC)", 1))


def _current_objects(repo: Any) -> set[str]:
    """Object ids the workspace's current ``dvc.lock`` and ``.dvc`` files name, their directories' entries too:
    the objects a checkout of this commit needs, each file of someone else included."""
    needed: set[str] = set()
    for out in (o for stage in repo.index.stages for o in stage.outs):
        oid = out.hash_info.value if out.hash_info else None
        if not oid:
            continue
        needed.add(oid)
        if oid.endswith(".dir"):
            needed |= {entry["md5"] for entry in _listing(repo.cache.local, oid) or []}
    return needed


def _listing(odb: Any, oid: str) -> list[dict[str, str]] | None:
    try:
        with odb.fs.open(odb.oid_to_path(oid), "rb") as handle:
            return json.loads(handle.read())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _holding(target: Target, odb: Any) -> set[str]:
    """The objects of one store that hold the person: directory entries in their folder (and the directory
    listings naming them), then any other object whose bytes hold them (target.py), images of other people's
    folders excepted (read by nobody: a forget costs the tables and listings, not every photo)."""
    oids = set(odb.all())
    holding: set[str] = set()
    others_images: set[str] = set()
    for oid in sorted(o for o in oids if o.endswith(".dir")):
        entries = _listing(odb, oid) or []
        theirs = [e for e in entries if target.owns_path(e["relpath"])]
        if theirs:
            holding.add(oid)
            for entry in theirs:
                holding.add(entry["md5"])
                _learn_digest(target, odb, entry)
        others_images |= {e["md5"] for e in entries if not target.owns_path(e["relpath"])
                          and e["relpath"].lower().endswith(IMAGE_SUFFIXES)}
    for oid in sorted(oids - holding - others_images):
        if oid.endswith(".dir"):
            continue
        with odb.fs.open(odb.oid_to_path(oid), "rb") as handle:
            if target.holds(handle.read()):
                holding.add(oid)
    return holding & oids


def _learn_digest(target: Target, odb: Any, entry: dict[str, str]) -> None:
    """A file of their folder in some version: its SHA-256 joins the target (an old crop made with other
    settings is found in the tables and packed sets that hold it too)."""
    import hashlib

    if entry["relpath"].lower().endswith(IMAGE_SUFFIXES):
        try:
            with odb.fs.open(odb.oid_to_path(entry["md5"]), "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
        except FileNotFoundError:
            return
        if digest not in target.photos:
            target.crops.add(digest)


@task(name="forget:gallery")
def remove_from_gallery(plan_: Plan, params: Params) -> None:
    from components.gallery.database import scrub
    from components.gallery.gallery import GalleryError
    from flows.gallery import gallery_in_use

    gallery = gallery_in_use(params)
    if gallery is None:
        plan_.removals.append(Removal("gallery", "none", "faces", 0))
        return
    where = gallery.engine.url.render_as_string(hide_password=True)
    try:
        removed = gallery.remove(plan_.target.identity)
    except GalleryError:  # not enrolled
        removed = {"faces_removed": 0, "templates_removed": 0}
    scrub(gallery.engine)  # nor their rows' bytes left in the database's files
    plan_.removals.append(Removal("gallery", where, "faces and crops", removed["faces_removed"]))
    plan_.removals.append(Removal("gallery", where, "templates", removed["templates_removed"]))


@task(name="forget:receipt")
def write_receipt(plan_: Plan, params: Params) -> Path:
    receipt = Receipt(plan_.receipt_id, subject_digest(plan_.target.identity),
                      sorted(photo_digest(s) for s in plan_.target.photos), plan_.removals, plan_.kept_shared,
                      plan_.failed, plan_.notes)
    path = append_receipt(params.forget.receipts_dir, receipt)
    if not plan_.failed:
        _pending_path(params, plan_.target.identity).unlink(missing_ok=True)
    return path


@flow(name="forget", log_prints=True)
def forget(identity: str, workspace: str = ".", lock_timeout_s: float | None = None) -> dict[str, Any]:
    """Forget ``identity`` everywhere faceforge keeps it; the receipt's path and what was removed where. It
    rewrites the DVC outputs a retrain writes, so it holds the retrain's workspace lock (flows/lock.py)."""
    root = Path(workspace).resolve()
    with locked_workspace(root, "retrain", lock_timeout_s, holder="forget") as params:
        plan_ = plan(identity, params)
        remove_from_workspace(plan_, params)
        rebuild(plan_, params, root)
        purge_dvc(plan_, root)
        remove_from_gallery(plan_, params)
        receipt = write_receipt(plan_, params)
    return {"receipt": str(root / receipt), "removed": [asdict(r) | {"objects": len(r.objects)}
                                                       for r in plan_.removals],
            "kept_shared": plan_.kept_shared, "failed": plan_.failed}
