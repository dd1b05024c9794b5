from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faceforge.cli import app
from pipelines.params import ParamsError, load_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.raw_dir == Path("data/raw")


def test_unknown_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("detect:\n  scor_threshold: 0.5\n")
    with pytest.raises(ParamsError, match=r"detect\.scor_threshold: unknown key"):
        load_params(tmp_path / "p.yaml")


def test_bad_value_is_named_with_what_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("quality_filter:\n  min_images_per_identity: 0\n")
    with pytest.raises(ParamsError, match=r"quality_filter\.min_images_per_identity: .*greater than or equal to 1"):
        load_params(tmp_path / "p.yaml")


def test_set_overrides_parse_like_yaml(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("{}\n")
    params = load_params(tmp_path / "p.yaml", ["detect.score_threshold=0.7", "detect.model_path=null"])
    assert params.detect.score_threshold == 0.7 and params.detect.model_path is None
    with pytest.raises(ParamsError, match="expected dotted.key=value"):
        load_params(tmp_path / "p.yaml", ["detect.score_threshold"])


def test_cli_exits_non_zero_with_reason_on_stderr(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("detect:\n  input_size: -3\n")
    result = CliRunner().invoke(app, ["detect", "--params", str(tmp_path / "p.yaml")])
    assert result.exit_code == 2
    assert "detect.input_size" in result.stderr


def test_cli_missing_raw_folder_names_it(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(f"data:\n  raw_dir: {tmp_path / 'nowhere'}\n")
    result = CliRunner().invoke(app, ["detect", "--params", str(tmp_path / "p.yaml")])
    assert result.exit_code == 1
    assert "nowhere" in result.stderr and "not found" in result.stderr


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-c", "from faceforge.cli import app; app()", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for stage in ("detect", "align", "quality_filter", "pack", "sample"):
        assert stage in out
