"""``faceforge``: the human entry point. Each stage command runs exactly the code ``dvc repro`` runs."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipelines.params import ParamsError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (validated on load)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: dotted.key=value (repeatable)")]


def _run_stage(stage: str, params_file: Path, overrides: list[str] | None) -> None:
    try:
        params = load_params(params_file, overrides or [])
        module = importlib.import_module(f"pipelines.{stage}")
        report = module.run(params)
    except ParamsError as exc:
        typer.echo(f"faceforge {stage}: {exc}", err=True)
        raise typer.Exit(2) from None
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # One line on stderr (contract); the traceback would bury the file name users need.
        typer.echo(f"faceforge {stage}: {exc}".splitlines()[0], err=True)
        for line in str(exc).splitlines()[1:]:
            typer.echo(line, err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))


def _stage_command(stage: str, summary: str) -> None:
    def command(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
        _run_stage(stage, params, set_)

    command.__doc__ = summary
    app.command(name=stage)(command)


for _stage, _summary in [
    ("sample", "Write the bundled sample faces as raw photos into data.raw_dir."),
    ("detect", "Find the main face and its 5 landmarks in every raw photo."),
    ("align", "Warp each detected face onto the 112x112 ArcFace template."),
    ("quality_filter", "Score, de-duplicate and validate the aligned faces (Great Expectations)."),
    ("pack", "Write the kept faces as InsightFace RecordIO (train.rec/.idx/property)."),
    ("train", "Train backbone + model-parallel Partial FC head on Ray Train (TorchTrainer)."),
]:
    _stage_command(_stage, _summary)


def main() -> None:  # pragma: no cover - console-script shim
    sys.exit(app())
