"""How every ``faceforge`` command ends: its report as JSON (or a summary), or one line naming what was wrong."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from flows.dvc_stages import TRANSIENT_EXIT  # the exit code the retrain flow retries
from pipelines.params import ParamsError


def transient_errors() -> tuple[type[BaseException], ...]:
    """Failures that may pass on their own: network, S3 endpoint, timeouts."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import EndpointConnectionError

    return ConnectionError, TimeoutError, BotoConnectionError, EndpointConnectionError


def report_errors(command: str, action: Callable[[], Any],
                   show: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Run ``action`` and print its report (JSON, or ``show``); user errors become one line on stderr and a
    non-zero exit."""
    try:
        report = action()
    except ParamsError as exc:
        typer.echo(f"faceforge {command}: {exc}", err=True)
        raise typer.Exit(2) from None
    except transient_errors() as exc:
        typer.echo(f"faceforge {command}: transient failure, worth retrying: {exc}".splitlines()[0], err=True)
        raise typer.Exit(TRANSIENT_EXIT) from None
    except (FileNotFoundError, ValueError, RuntimeError, PermissionError, pickle.UnpicklingError) as exc:
        # One line on stderr (contract); the traceback would bury the file name users need.
        typer.echo(f"faceforge {command}: {exc}".splitlines()[0], err=True)
        for line in str(exc).splitlines()[1:]:
            typer.echo(line, err=True)
        raise typer.Exit(1) from None
    if show is not None:
        show(report)
    else:
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))


def read_photos(paths: list[Path]) -> list[bytes]:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: photo not found")
    return [p.read_bytes() for p in paths]
