"""``faceforge sample``: the bundled real faces as demo input.

ORL subjects ``1..data.sample_identities`` become raw photos in ``data.raw_dir`` (the training people); the next
``data.eval_identities`` subjects, never trained on, become the IJB-C-format mini set and verification ``.bin``
in ``data.eval_sets_dir`` that the eval stage reads by default. With ``data.corpus_photos`` it writes a synthetic
scale corpus instead (components/sample/corpus.py), for cost measurements.
"""

from __future__ import annotations

from typing import Any

from components.sample.corpus import CorpusConfig, write_corpus
from components.sample.eval_sets import EvalSetConfig, write_eval_sets
from components.sample.raw_photos import SampleConfig, write_sample_raw
from pipelines.common import timed, write_report
from pipelines.params import Params


def run(params: Params) -> dict[str, Any]:
    d = params.data
    config = SampleConfig(identities=d.sample_identities, images_per_identity=d.sample_images_per_identity,
                          canvas=d.sample_canvas, second_face_fraction=d.second_face_fraction, seed=d.seed)
    report: dict[str, Any] = {"raw_dir": str(d.raw_dir)}
    if d.corpus_photos:
        corpus = CorpusConfig(photos=d.corpus_photos, identities=d.corpus_identities, seed=d.seed,
                              canvas=d.sample_canvas, hostile_fraction=d.corpus_hostile_fraction)
        with timed(report):
            report["corpus"] = write_corpus(d.raw_dir, corpus)
        write_report("sample", report)
        return report
    with timed(report):
        report["images"] = write_sample_raw(d.raw_dir, config)
        if d.eval_identities:
            held_out = tuple(range(d.sample_identities + 1, d.sample_identities + d.eval_identities + 1))
            eval_config = EvalSetConfig(subjects=held_out, templates_per_subject=d.eval_templates_per_identity,
                                        bin_pairs=d.eval_bin_pairs, seed=d.seed)
            report["eval_sets"] = write_eval_sets(d.eval_sets_dir, eval_config)
            report["eval_sets_dir"] = str(d.eval_sets_dir)
    report["identities"] = d.sample_identities
    write_report("sample", report)
    return report
