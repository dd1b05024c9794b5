"""[P] The alert rules and the Prometheus configs are valid, and each alert fires on its case and stays quiet on a
steady day (infra/prometheus/alerts_test.yml), checked by Prometheus's own promtool (.ci/run installs Debian's
`prometheus`). A real Prometheus scraping the real servers with these rules: tests/test_end_to_end.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).parents[1] / "infra" / "prometheus"
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None, reason="promtool is not installed (apt-get install prometheus)")


def _promtool(*args: str) -> str:
    assert promtool is not None
    done = subprocess.run([promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_promtool
def test_rules_and_configs_are_valid() -> None:
    assert "SUCCESS: 17 rules found" in _promtool("check", "rules", "alerts.yml")
    _promtool("check", "config", "prometheus.yml", "local.yml")


@needs_promtool
def test_each_alert_fires_on_its_case_and_not_on_a_steady_day() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")
