"""Great Expectations 1.x validation of the quality manifest, with Data Docs and a readable summary.

The suite lives in a JSON file in the repo so reviewers see data rules in diffs; limits that belong to
a run (rejected fraction, identity count) are suite parameters filled from params.yaml.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx  # analytics off: components/env_defaults.py
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig


@dataclass
class ValidationSummary:
    success: bool
    evaluated: int
    critical_failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"data validation {'passed' if self.success else 'FAILED'}: {self.evaluated} expectations"]
        lines += [f"  critical: {m}" for m in self.critical_failures]
        lines += [f"  warning:  {m}" for m in self.warnings]
        return "\n".join(lines)


def _explain(result: Any) -> str:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "column")}
    where = f"({cfg.kwargs['column']})" if "column" in cfg.kwargs else ""
    observed = result.result.get("observed_value")
    if observed is None and result.result.get("unexpected_count") is not None:
        sample = result.result.get("partial_unexpected_list", [])[:3]
        observed = f"{result.result['unexpected_count']} unexpected, e.g. {sample}"
    return f"{cfg.type}{where}: observed {observed}; expected {kwargs}"


def validate_frame(frame: pd.DataFrame, suite_file: Path, parameters: dict[str, Any],
                   docs_dir: Path) -> ValidationSummary:
    """Validate ``frame`` against ``suite_file``; build Data Docs HTML under ``docs_dir``."""
    suite_spec = json.loads(Path(suite_file).read_text(encoding="utf-8"))
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site("local", {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    asset = context.data_sources.add_pandas("faceforge").add_dataframe_asset(suite_spec["name"])
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(**suite_spec))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=suite.name, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=suite.name, validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
    ))
    outcome = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters)
    results = next(iter(outcome.run_results.values())).results
    summary = ValidationSummary(success=True, evaluated=len(results))
    for result in results:
        if result.success:
            continue
        if str(result.expectation_config.severity.value) == "critical":
            summary.critical_failures.append(_explain(result))
            summary.success = False
        else:
            summary.warnings.append(_explain(result))
    return summary
