"""DVC as the system of record: the remote that holds every stage output, and what rebuilds a served model.

- The remote: a folder by default, per machine and offline (``~/.cache/faceforge/dvc-storage``, written to
  ``.dvc/config.local``, which git ignores); S3 for a team, written to ``.dvc/config`` (committed: every clone
  pushes to and pulls from the same store), with the endpoint from ``AWS_ENDPOINT_URL`` (MinIO) and the
  credentials from the environment, never from a file. ``faceforge remote [URL]`` switches; a remote that
  does not answer or refuses is one line naming it.
- After a passing retrain the flow pushes the outputs, and the registered version records the git revision
  and the exact ``dvc.lock`` (an artifact, and its SHA-256 as a tag): at that revision with that file,
  ``dvc pull`` gives the served model and its training data byte for byte.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

LOCAL_DEFAULT = Path.home() / ".cache" / "faceforge" / "dvc-storage"
LOCAL_NAME, TEAM_NAME = "local", "storage"


class RemoteError(RuntimeError):
    """The DVC remote cannot be used (missing bucket, refused credentials, not writable)."""


class RemoteUnavailable(RemoteError, ConnectionError):
    """The DVC remote's endpoint did not answer: may pass (exit 75, the retrain flow retries)."""


def _repo(root: Path) -> Any:
    from dvc.repo import Repo

    return Repo(str(root))


def configured_remote(root: Path = Path(".")) -> tuple[str, str] | None:
    """(name, url) of the default remote, or None when the repository has none."""
    with _repo(root) as repo:
        name = repo.config["core"].get("remote")
        return (name, repo.config["remote"][name]["url"]) if name else None


def check_remote(url: str) -> None:
    """Fail here, naming the remote, rather than with DVC's count of failed uploads."""
    if url.startswith("s3://"):
        from components.serving.store import StoreError, StoreUnreachable, open_store

        try:
            open_store(url)  # HEAD on the bucket, with the environment's endpoint and credentials
        except StoreUnreachable as exc:
            raise RemoteUnavailable(f"DVC remote {exc}") from None
        except StoreError as exc:
            raise RemoteError(f"DVC remote {exc}") from None
    elif "://" not in url:
        try:
            Path(url).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RemoteError(f"DVC remote {url}: not a writable folder ({exc.strerror})") from None
    else:
        raise RemoteError(f"DVC remote {url}: only a folder or s3://bucket/prefix is supported here")


def set_remote(root: Path = Path("."), url: str | None = None) -> dict[str, str]:
    """Make ``url`` (default: the per-machine folder) the repository's default remote; checked first."""
    url = url or str(LOCAL_DEFAULT)
    check_remote(url)
    team = url.startswith("s3://")
    name, level = (TEAM_NAME, "repo") if team else (LOCAL_NAME, "local")
    remote: dict[str, str] = {"url": url}
    if team and os.environ.get("AWS_ENDPOINT_URL"):
        remote["endpointurl"] = os.environ["AWS_ENDPOINT_URL"]
    with _repo(root) as repo:
        with repo.config.edit(level) as config:
            config["remote"][name] = remote
            config["core"]["remote"] = name
        if team:  # a per-machine default must not shadow the team's remote
            with repo.config.edit("local") as config:
                if config.get("core", {}).get("remote") == LOCAL_NAME:
                    del config["core"]["remote"]
    return {"remote": name, "url": url, "config": ".dvc/config" if team else ".dvc/config.local"}


def ensure_remote(root: Path = Path(".")) -> tuple[str, str]:
    """The configured remote, or the per-machine folder created now (the first push needs somewhere to go)."""
    found = configured_remote(root)
    if found is None:
        set_remote(root)
        found = configured_remote(root)
    assert found is not None
    return found


def push(root: Path = Path(".")) -> dict[str, Any]:
    """``dvc push`` of every stage output to the default remote; a failure names the remote."""
    from dvc.exceptions import DvcException

    name, url = ensure_remote(root)
    check_remote(url)
    with _repo(root) as repo:
        try:
            pushed = repo.push()
        except DvcException as exc:
            raise RemoteError(f"dvc push to {name} ({url}) failed: {exc}") from None
    return {"remote": name, "url": url, "pushed": pushed}


def lock_record(root: Path = Path(".")) -> tuple[str, str]:
    """(dvc.lock text, its SHA-256): with the git revision, what reproduces the outputs exactly."""
    text = (Path(root) / "dvc.lock").read_text()
    return text, hashlib.sha256(text.encode()).hexdigest()


def describe_remote(url: str) -> str:
    """For messages and tags: the URL, plus the S3 endpoint it goes through when one is set."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return f"{url} via {urlparse(endpoint).netloc}" if url.startswith("s3://") and endpoint else url


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    import subprocess

    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args[:2])} in {root} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def commit_run(root: Path, branch: str, message: str) -> str | None:
    """Commit what a run changed in git's view -- ``dvc.lock``, the metrics and plots files, ``*.dvc`` files,
    params -- on ``branch``, on top of the checked-out commit, **without touching the working tree, the index
    or HEAD** (a temporary index and git's plumbing), so a scheduled run never disturbs a checkout a person
    may be using. Returns the commit, which with the DVC remote reproduces every output
    (``git checkout <commit> && dvc pull``); None outside a git repository."""
    import os
    import tempfile

    root = Path(root)
    try:
        head = _git(root, "rev-parse", "HEAD")
    except RuntimeError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(tmp) / "index"))
        _git(root, "read-tree", head, env=env)
        # Tracked files as they are now, plus DVC's small text files that a run creates (dvc.lock, metrics, plots
        # and .dvc files are git's to keep; DVC's .gitignore entries keep the data itself out).
        _git(root, "add", "--update", ".", env=env)
        _git(root, "add", "--", *[p for p in _run_files(root) if (root / p).exists()], env=env)
        tree = _git(root, "write-tree", env=env)
    identity = {"GIT_AUTHOR_NAME": "faceforge", "GIT_AUTHOR_EMAIL": "faceforge@localhost",
                "GIT_COMMITTER_NAME": "faceforge", "GIT_COMMITTER_EMAIL": "faceforge@localhost"}
    commit = _git(root, "commit-tree", tree, "-p", head, "-m", message, env=dict(os.environ) | {
        k: os.environ.get(k, v) for k, v in identity.items()})
    _git(root, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def _run_files(root: Path) -> list[str]:
    """dvc.lock, every metrics/plots file dvc.yaml declares with ``cache: false``, every ``*.dvc`` file."""
    import yaml

    files = ["dvc.lock"]
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for kind in ("metrics", "plots"):
            for entry in stage.get(kind, []):
                path, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
                if (options or {}).get("cache") is False:
                    files.append(path)
    untracked = _git(root, "ls-files", "--others", "--exclude-standard", "--", "*.dvc")  # git skips ignored data
    return files + untracked.splitlines()
