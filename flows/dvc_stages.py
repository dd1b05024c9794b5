"""The DVC pipeline, one stage at a time, through DVC's Python API.

DVC stays the source of truth: a stage whose deps and params are unchanged is skipped, one DVC has run before
with the same inputs comes back from its run cache, and dvc.lock records what produced every output. Running
stage by stage (``single_item``) gives each its own Prefect task, retries and log section.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

TRANSIENT_EXIT = 75  # EX_TEMPFAIL: `faceforge` exits with it when a network or service failure may pass


class StageFailed(RuntimeError):
    """A stage's command failed; ``transient`` says whether running it again may help."""

    def __init__(self, stage: str, exit_code: int | None, detail: str) -> None:
        self.stage, self.exit_code = stage, exit_code
        self.transient = exit_code == TRANSIENT_EXIT
        super().__init__(f"stage {stage!r} failed (exit code {exit_code}): {detail}; outputs of earlier stages "
                         "are intact and a rerun resumes from DVC's cache")


def pipeline_stages(root: Path = Path(".")) -> list[str]:
    """Stage names in dvc.yaml order, which is the pipeline's order (docs/architecture.md, "Contracts")."""
    return list((yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {}))


def needed_stages(root: Path = Path(".")) -> list[str]:
    """The stages the last one (publish) needs, in pipeline order: a stage nothing downstream reads is not run
    or required up to date (train, when ``export.model`` serves an imported ``.onnx`` as it is)."""
    from dvc.repo import Repo

    order = pipeline_stages(root)
    with Repo(str(root)) as repo:
        stages = repo.stage.collect(f"{(root / 'dvc.yaml').resolve()}:{order[-1]}", with_deps=True)
        needed = {getattr(stage, "name", None) for stage in stages}
    return [name for name in order if name in needed]


def _ensure_faceforge_on_path() -> None:
    # Stage commands are `faceforge <stage>`: a worker started as `.venv/bin/python -m ...` has the venv's
    # scripts folder off PATH, so DVC's shell would not find the console script it installed.
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def reproduce(stage: str, root: Path = Path(".")) -> bool:
    """Bring one stage up to date; True when it ran (or was restored from the run cache), False when skipped."""
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    _ensure_faceforge_on_path()
    try:
        with Repo(str(root)) as repo:
            # A bare stage name would be looked up in the *current* folder's dvc.yaml, not the repository's.
            return bool(repo.reproduce(f"{(root / 'dvc.yaml').resolve()}:{stage}", single_item=True))
    except ReproductionError as exc:
        cause = exc.__cause__
        # DVC keeps the exit status only inside its message ("failed to run: cmd, exited with N").
        match = re.search(r"exited with (-?\d+)", str(cause or ""))
        raise StageFailed(stage, int(match.group(1)) if match else None, str(cause or exc)) from exc


def stale_stages(root: Path = Path(".")) -> list[str]:
    """Stages whose outputs no longer match their inputs, as ``dvc status`` sees them."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        # Names come back as seen from the current folder ("../p/dvc.yaml:train"): keep the stage name.
        return sorted(name.rsplit(":", 1)[-1] for name in repo.status())
