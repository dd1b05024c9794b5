"""``faceforge``: the human entry point. Each stage command runs exactly the code ``dvc repro`` runs."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from faceforge.gallery_cli import gallery_app
from faceforge.reporting import read_photos, report_errors, transient_errors
from faceforge.triton_options import ModelOpt, ProtocolOpt, UrlOpt, triton_target
from flows.dvc_stages import TRANSIENT_EXIT  # the exit code the retrain flow retries
from pipelines.params import MonitoringParams, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (validated on load)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: dotted.key=value (repeatable)")]


def _run_stage(stage: str, params_file: Path, overrides: list[str] | None) -> None:
    def action() -> dict[str, Any]:
        params = load_params(params_file, overrides or [])
        return importlib.import_module(f"pipelines.{stage}").run(params)

    report_errors(stage, action)


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
    ("import_model", "Bring a pretrained embedder (import_model.source) into the served contract, checked "
                     "against the source on real faces, with its lineage."),
    ("warm_start", "Copy the registered version a retrain continues from (warm_start.version, pinned by "
                   "`faceforge continue-from`) out of DVC's cache."),
    ("train", "Train backbone + model-parallel Partial FC head on Ray Train (TorchTrainer)."),
    ("export", "Export the trained backbone to ONNX (dynamic batch, checked, parity-tested)."),
    ("quantize", "Quantize the ONNX model to INT8 (QDQ), measure its accuracy and speed against FP32, and "
                 "choose the variant to serve."),
    ("publish", "Build the candidate Triton repository and prove it in a real Triton (python-backend copy)."),
]:
    _stage_command(_stage, _summary)

ServingOpt = Annotated[list[str] | None, typer.Option(
    "--serving-repository", help="a folder or s3://bucket/prefix (repeatable; default FACEFORGE_SERVING_REPOSITORY, "
    "else publish.serving_repository)")]


def _prefect_reachable() -> None:
    """With a Prefect server configured, say so in one line when it does not answer (exit 75), instead of a
    client traceback after minutes of retries; without one, flows use Prefect's ephemeral local API."""
    import os

    import httpx

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=10).raise_for_status()
        # the health check needs no credentials; a server with an auth string refuses everything else
        auth = os.environ.get("PREFECT_API_AUTH_STRING")
        reply = httpx.post(f"{url.rstrip('/')}/flows/filter", json={"limit": 1}, timeout=10,
                           auth=tuple(auth.split(":", 1)) if auth and ":" in auth else None)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"the Prefect API at {url} is unreachable ({type(exc).__name__}: {exc})") from None
    if reply.status_code in (401, 403):
        raise PermissionError(f"the Prefect API at {url} refused the credentials (HTTP {reply.status_code}): set "
                              "PREFECT_API_AUTH_STRING to the server's PREFECT_SERVER_API_AUTH_STRING")


@app.command("retrain")
def retrain_command(
    lock_timeout: Annotated[float | None, typer.Option(help="seconds to wait for a running retrain")] = None,
    workspace: Annotated[Path, typer.Option(help="the DVC repository")] = Path("."),
    full: Annotated[bool, typer.Option("--full", help="start from train.init_from even when the champion could "
                                       "be continued (a warm retrain)")] = False,
) -> None:
    """Prefect flow: dvc repro stage by stage, MLflow run + registered version, promotion gate (exit 1 on fail)."""
    from flows.retrain import retrain

    def action() -> dict[str, Any]:
        _prefect_reachable()
        summary = retrain(workspace=str(workspace), lock_timeout_s=lock_timeout, full=full)
        if summary["gate"] != "pass":
            raise RuntimeError(f"gate failed for version {summary['model_version']}: " + "; ".join(summary["reasons"]))
        return summary

    report_errors("retrain", action)


@app.command("drift")
def drift_command(
    workspace: Annotated[Path, typer.Option(help="the DVC repository")] = Path("."),
) -> None:
    """Prefect flow: the last monitoring.window_minutes of captured live traffic against each served version's
    reference (docs/monitoring.md); a drifted window starts the retrain deployment, its reason in the run."""
    from flows.drift import drift

    def action() -> dict[str, Any]:
        _prefect_reachable()
        return drift(workspace=str(workspace))

    report_errors("drift", action)


@app.command("forget")
def forget_command(
    identity: Annotated[str, typer.Argument(help="the identity folder under data.raw_dir")],
    yes: Annotated[bool, typer.Option("--yes", help="forget without asking")] = False,
    workspace: Annotated[Path, typer.Option(help="the DVC repository")] = Path("."),
) -> None:
    """Prefect flow: remove a person from every store faceforge writes (docs/data_protection.md) and print the
    path of the receipt; exit 0 only when every removal succeeded."""
    if not yes:
        typer.confirm(f"Forget {identity}: their photos, crops and templates everywhere faceforge keeps them?",
                      abort=True)

    def action() -> dict[str, Any]:
        from flows.forget import forget, request
        from flows.lock import in_workspace

        with in_workspace(workspace):  # params' paths are the project's
            request(identity, load_params(Path("params.yaml")))  # a bad request: one line, nothing started
        _prefect_reachable()
        done = forget(identity=identity, workspace=str(workspace))
        if done["failed"]:
            raise RuntimeError(f"{identity}: not every removal succeeded ({'; '.join(done['failed'])}); "
                               f"receipt {done['receipt']}; run it again to finish")
        return done

    def show(done: dict[str, Any]) -> None:
        for removal in done["removed"]:
            typer.echo(f"{removal['store']}: {removal['count']} {removal['what']} ({removal['where']})", err=True)
        for kept in done["kept_shared"]:
            typer.echo(f"kept: {kept}", err=True)
        typer.echo(done["receipt"])

    report_errors("forget", action, show)


@app.command("promote")
def promote_command(
    serving_repository: ServingOpt = None,
    force: Annotated[bool, typer.Option(help="serve even a version that failed the gate (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option(help="why --force; recorded on the model version")] = None,
    backend: Annotated[str | None, typer.Option(
        help="Triton backend of the published version: onnxruntime | python (default publish.backend)")] = None,
    workspace: Annotated[Path, typer.Option(help="the DVC repository")] = Path("."),
    check: Annotated[bool, typer.Option(
        "--check", help="only verify every served version's files against its manifest and the registry's "
                        "model_sha256; non-zero exit naming what differs")] = False,
) -> None:
    """Serve the MLflow version holding the `champion` alias now (what the approval watcher does by itself)."""

    def action() -> dict[str, Any]:
        if check:  # no Prefect: a verification, not a flow run
            return _check_served(workspace, serving_repository)
        from flows.promote import promote

        _prefect_reachable()
        return promote(serving_repositories=serving_repository, force=force, reason=reason, backend=backend,
                       workspace=str(workspace))

    report_errors("promote", action)


@app.command("accounts")
def accounts_command(params: ParamsOpt = Path("params.yaml")) -> None:
    """Team mode: create or update the approver, retrain and watcher accounts of an MLflow basic-auth server
    with the least permissions each needs (run as its admin; passwords from the environment: flows/accounts.py)."""
    from flows.accounts import accounts_from_environment, provision
    from flows.tracking import check_reachable, tracking_uri

    def action() -> dict[str, Any]:
        loaded = load_params(params)
        uri = tracking_uri(loaded)
        check_reachable(uri)
        return provision(uri, loaded.mlflow.experiment, loaded.mlflow.registered_model, accounts_from_environment())

    report_errors("accounts", action)


def _check_served(workspace: Path, repositories: list[str] | None) -> dict[str, Any]:
    from flows.serving import check_served_files

    found = check_served_files(load_params(workspace / "params.yaml"), repositories)
    if found:
        raise RuntimeError("served files differ from what was published: "
                           + "; ".join(f"{f['repository']}: {p}" for f in found for p in f["problems"]))
    return {"checked": "every served version matches its manifest and the registry", "tampered": []}


@app.command("lineage")
def lineage_command(
    version: Annotated[str, typer.Argument(help="a version number, or an alias such as champion")] = "champion",
    serving_repository: ServingOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of the summary")] = False,
    dvc_lock: Annotated[bool, typer.Option("--dvc-lock", help="print the exact dvc.lock the version was built "
                                           "from (at its git revision, `dvc pull` restores every output)")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Where a registered model came from and where it is served: data hash, git revision, params, metrics,
    gate verdict, approval, serving repositories, MLflow run and Prefect flow run."""
    from flows.lineage import describe, dvc_lock_text, render_text
    from flows.serving import registry_client, serving_repositories

    loaded = load_params(params)
    if dvc_lock:
        report_errors("lineage", lambda: {"dvc.lock": dvc_lock_text(registry_client(loaded), loaded, version)},
                       show=lambda report: typer.echo(report["dvc.lock"], nl=False))
        return
    try:
        repositories = serving_repositories(loaded, serving_repository)
    except ValueError:
        repositories = []
    try:
        record = describe(registry_client(loaded), loaded, version, repositories)
    except transient_errors() as exc:
        typer.echo(f"faceforge lineage: transient failure, worth retrying: {exc}".splitlines()[0], err=True)
        raise typer.Exit(TRANSIENT_EXIT) from None
    except Exception as exc:  # noqa: BLE001 - an unknown version or alias: one line naming it
        typer.echo(f"faceforge lineage: {loaded.mlflow.registered_model} {version}: {exc}".splitlines()[0], err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(record, indent=2, sort_keys=True, default=str) if as_json else render_text(record))


@app.command("continue-from")
def continue_from_command(
    version: Annotated[str, typer.Argument(help="champion (any alias), a version number, or none")] = "champion",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Continue training from a registered version: pins its train output (DVC md5) as warm_start.version /
    train_md5 in params.yaml, fetched into DVC's cache; `dvc repro` then retrains warm. `none` unpins."""
    from flows.serving import registry_client
    from flows.warm_start import choose, ensure_cached, pin

    def action() -> dict[str, Any]:
        loaded = load_params(params)
        start = choose(registry_client(loaded), loaded, version)
        ensure_cached(start)
        changed = pin(params, start)
        return {"version": start.version, "train_md5": start.train_md5, "reason": start.reason,
                "params_changed": changed}

    report_errors("continue-from", action)


@app.command("remote")
def remote_command(
    url: Annotated[str | None, typer.Argument(help="s3://bucket/prefix for a team (AWS_ENDPOINT_URL for MinIO), or a "
                                              "folder. Without: the configured remote, else this machine's "
                                              "~/.cache/faceforge/dvc-storage")] = None,
    workspace: Annotated[Path, typer.Option(help="the DVC repository")] = Path("."),
) -> None:
    """Set (or show) the DVC remote every stage output is pushed to; checked first, credentials from the
    environment, never written to a file."""
    from flows.versioning import ensure_remote, set_remote

    def action() -> dict[str, Any]:
        if url:
            return set_remote(workspace, url)
        name, where = ensure_remote(workspace)
        return {"remote": name, "url": where}

    report_errors("remote", action)


@app.command("triton")
def triton_command(
    repository: Annotated[str, typer.Option(help="a Triton model repository: folder or s3://bucket/prefix "
                                            "(AWS_ENDPOINT_URL for MinIO)")],
    http_port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port on 127.0.0.1")] = 8001,
    poll_s: Annotated[int, typer.Option(help="how often Triton looks for a new served version")] = 5,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics on 127.0.0.1 (docs/monitoring.md); "
                                              "0 serves none")] = 8002,
    capture: Annotated[str | None, typer.Option(help="folder where the photo-in model keeps its answers for the "
                                                "drift check (default: FACEFORGE_CAPTURE, else monitoring.capture"
                                                "); 'none' keeps none")] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Serve a repository with the Triton bundled in nvidia-pytriton (python backend, CPU) until Ctrl-C.

    For trying served models on this machine (`publish.backend: python`); production uses the Triton container
    of infra/compose.yaml. Poll mode: promotions and rollbacks are picked up live."""
    import os
    import signal
    import time

    from components.serving.triton_server import TritonError, TritonServer

    def stop(signum: int, frame: object) -> None:  # SIGTERM (service managers, `timeout`) stops it like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    monitoring = load_params(params).monitoring if params.is_file() else MonitoringParams()
    capture = capture or os.environ.get("FACEFORGE_CAPTURE") or monitoring.capture
    try:
        with TritonServer(repository, model_control="poll", http_port=http_port, grpc_port=grpc_port,
                          poll_s=poll_s, metrics=metrics_port > 0, metrics_port=metrics_port or None,
                          capture=None if capture == "none" else capture,
                          capture_retention_days=monitoring.capture_retention_days) as s:
            metrics = f", {s.metrics_url} (metrics)" if s.metrics_url else ""
            typer.echo(f"Triton ready: http://{s.http_url} (HTTP/REST), {s.grpc_url} (gRPC){metrics}; "
                       "Ctrl-C stops it")
            while True:
                time.sleep(3600)
    except TritonError as exc:
        typer.echo(f"faceforge triton: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("stopped")


@app.command("rollback")
def rollback_command(
    to: Annotated[int | None, typer.Option("--to", help="version to serve (default: the one before)")] = None,
    serving_repository: Annotated[str | None, typer.Option(
        help="serving repository (default: as promote)")] = None,
    workspace: Annotated[Path, typer.Option(help="the DVC repository")] = Path("."),
) -> None:
    """Serve an earlier version again (version policy only, nothing deleted); the champion alias follows."""
    from flows.promote import rollback

    def action() -> dict[str, Any]:
        _prefect_reachable()
        return rollback(to=to, serving_repository=serving_repository, workspace=str(workspace))

    report_errors("rollback", action)


@app.command("serve-flows")
def serve_flows_command(
    cron: Annotated[str | None, typer.Option(help="retrain schedule (default orchestration.schedule_cron)")] = None,
    backend: Annotated[str | None, typer.Option(
        help="Triton backend the watcher publishes: onnxruntime | python (default publish.backend)")] = None,
    port: Annotated[int, typer.Option(help="port of the local Prefect server started when PREFECT_API_URL "
                                      "is unset")] = 4200,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Long-running: the cron `retrain`, the approval watcher (`promote` every orchestration.approval_poll_s s),
    the manual `rollback` and the `drift` check (monitoring.drift_cron), served to Prefect (a local Prefect
    server, UI included, unless PREFECT_API_URL names one); a moved `champion` alias is served without anyone
    typing."""
    from flows.deploy import serve_flows

    loaded = load_params(params)
    serve_flows(cron or loaded.orchestration.schedule_cron, loaded.orchestration.approval_poll_s,
                str(Path(params).resolve().parent), backend, port, loaded.monitoring.drift_cron)


@app.command("gate")
def gate_command(
    champion: Annotated[Path | None, typer.Option(
        help="JSON of the baseline's metrics (dotted keys); default: the registry's champion version")] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
) -> None:
    """Fail-closed promotion gate over the reports; writes reports/gate.json + gate.md, exits 1 on fail."""
    from flows.gate_cli import champion_from, run_gate

    def action() -> dict[str, Any]:
        loaded = load_params(params, set_ or [])
        source, baseline = champion_from(loaded, champion)
        result = run_gate(loaded, baseline) | {"champion_source": source}
        if not result["passed"]:
            raise RuntimeError("gate failed: " + "; ".join(result["reasons"]))
        return result

    report_errors("gate", action)


eval_app = typer.Typer(add_completion=False, help="Evaluate a model: IJB-C 1:1/1:N and .bin verification sets.")
app.add_typer(eval_app, name="eval")


@eval_app.callback(invoke_without_command=True)
def eval_stage(ctx: typer.Context, params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None) -> None:
    """The eval stage (as `dvc repro` runs it), unless a subcommand such as `ijbc` is given."""
    if ctx.invoked_subcommand is None:
        _run_stage("eval", params, set_)


@eval_app.command("ijbc")
def eval_ijbc(
    root: Annotated[Path, typer.Option(help="IJB-C folder: meta/ and loose_crop/")],
    out: Annotated[Path, typer.Option(help="output folder (replaced atomically)")],
    model: Annotated[Path | None, typer.Option(help="train output folder, backbone.pth or .onnx")] = None,
    features: Annotated[Path | None, typer.Option(help="per-image features .npy, name_5pts_score.txt order")] = None,
    target: Annotated[str, typer.Option(help="file-name prefix in meta/: ijbc or ijbb")] = "ijbc",
    flip: Annotated[bool, typer.Option(help="add the mirrored face's embedding")] = True,
    detector_score: Annotated[bool, typer.Option(help="weight images by detection score")] = True,
    normalise_images: Annotated[bool, typer.Option(help="L2-normalise image features before pooling")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[int, typer.Option(min=0, help="image-loading processes")] = 1,
) -> None:
    """IJB-C (or IJB-B) 1:1 TAR@FAR and 1:N identification for one model or one features file."""
    from components.evaluation.ijbc import IjbcOptions
    from pipelines.eval import run_ijbc

    options = IjbcOptions(flip=flip, detector_score=detector_score, normalise_images=normalise_images,
                          batch_size=batch_size, loader_workers=workers)
    report_errors("eval ijbc", lambda: run_ijbc(root, out, target, options, model, features))


client_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Call the served photo-in model (faceforge-pipeline): photos in, faces and "
                         "decisions out.")
app.add_typer(client_app, name="client")
app.add_typer(gallery_app, name="gallery")


@client_app.callback()
def client_options(ctx: typer.Context, url: UrlOpt = "127.0.0.1:8001", protocol: ProtocolOpt = "grpc",
                   model: ModelOpt = "faceforge-pipeline") -> None:
    ctx.obj = triton_target(url, protocol, model)


def _client_call(ctx: typer.Context, command: str, call: Callable[[Any], Any]) -> None:
    """Run ``call(client)``; Triton's own errors (unreachable server, unknown model) become one line."""
    from tritonclient.utils import InferenceServerException

    from components.serving.client import FaceClient

    def action() -> Any:
        try:
            return call(FaceClient(ctx.obj["url"], ctx.obj["protocol"], ctx.obj["model"]))
        except InferenceServerException as exc:
            raise RuntimeError(f"{ctx.obj['url']} ({ctx.obj['protocol']}): {exc.message() or exc}") from None

    report_errors(f"client {command}", action)


@client_app.command("embed")
def client_embed(ctx: typer.Context, photos: Annotated[list[Path], typer.Argument(help="image files")]) -> None:
    """Each photo's status, face box, detector score and L2-normalised embedding (JSON)."""
    _client_call(ctx, "embed", lambda c: [e.summary(str(p)) for p, e in zip(photos, c.embed(read_photos(photos)),
                                                                            strict=True)])


@client_app.command("verify")
def client_verify(
    ctx: typer.Context, a: Annotated[Path, typer.Argument(help="first photo")],
    b: Annotated[Path, typer.Argument(help="second photo")],
    far: Annotated[float, typer.Option(help="false-accept rate whose served threshold decides")] = 1e-4,
) -> None:
    """Same person? The cosine of the two main faces against the served version's threshold at --far."""
    _client_call(ctx, "verify", lambda c: {"a": str(a), "b": str(b)} | c.verify(*read_photos([a, b]), far=far))


@client_app.command("identify")
def client_identify(
    ctx: typer.Context, probes: Annotated[list[Path], typer.Argument(help="photos to identify")],
    gallery: Annotated[Path, typer.Option(help="folder of <identity>/<photo> files to enrol")],
    top_k: Annotated[int, typer.Option(min=1, help="identities listed per probe")] = 5,
) -> None:
    """Top-k gallery identities per probe by cosine (exact search, components/serving/client.py says why)."""
    from components.serving.client import read_gallery

    def call(client: Any) -> list[dict[str, Any]]:
        ranked = client.identify(read_gallery(gallery), read_photos(probes), top_k)
        return [{"probe": str(p), "matches": [{"identity": i, "score": s} for i, s in r]}
                for p, r in zip(probes, ranked, strict=True)]

    _client_call(ctx, "identify", call)


def main() -> None:  # pragma: no cover - console-script shim
    sys.exit(app())
