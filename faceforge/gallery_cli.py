"""``faceforge gallery``: enrol people, identify and verify photos against them, through the served model.

Photos go to the served photo-in model (``faceforge triton``, or a team's Triton: ``--url``); the gallery itself
is the database and crop store ``gallery.*`` names (components/gallery/, docs/gallery.md). Every answer names the
model version that embedded the probe and the one that made the templates.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from faceforge.reporting import read_photos, report_errors
from faceforge.triton_options import ModelOpt, ProtocolOpt, UrlOpt, triton_target
from pipelines.params import load_params

gallery_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Enrolled people: enrol, remove, list, identify and verify against the served model.")

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of the summary")]


@gallery_app.callback()
def gallery_options(ctx: typer.Context, url: UrlOpt = "127.0.0.1:8001", protocol: ProtocolOpt = "grpc",
                    model: ModelOpt = "faceforge-pipeline",
                    params: Annotated[Path, typer.Option("--params", help="params file (gallery.*)")] = Path(
                        "params.yaml")) -> None:
    ctx.obj = triton_target(url, protocol, model) | {"params": params}


def _run(ctx: typer.Context, command: str, call: Callable[[Any, Any, Any], Any],
         show: Callable[[Any], str] | None, as_json: bool) -> None:
    """``call(gallery, client, params)``; Triton's and the database's errors become one line naming them."""
    from sqlalchemy.exc import OperationalError
    from tritonclient.utils import InferenceServerException

    from components.serving.client import FaceClient
    from flows.gallery import database_url, open_gallery

    def action() -> Any:
        params = load_params(ctx.obj["params"])
        try:
            gallery = open_gallery(params)
        except OperationalError as exc:
            from sqlalchemy.engine import make_url

            shown = make_url(database_url(params)).render_as_string(hide_password=True)
            why = f"gallery database {shown}: {str(exc.orig).strip()}"
            # a refused password will not pass on its own; a server that does not answer may (exit 75)
            raise (PermissionError if "authentication" in why else ConnectionError)(why) from None
        try:
            return call(gallery, FaceClient(ctx.obj["url"], ctx.obj["protocol"], ctx.obj["model"]), params)
        except InferenceServerException as exc:
            raise RuntimeError(f"{ctx.obj['url']} ({ctx.obj['protocol']}): {exc.message() or exc}") from None

    report_errors(f"gallery {command}", action,
                  None if as_json or show is None else lambda report: typer.echo(show(report)))


def _threshold(client: Any, far: float) -> float | None:
    from components.evaluation.roc import rate_key

    return client.thresholds().get(rate_key("far", far))


def _short(model: dict[str, str]) -> str:
    """``v3``, or the checksum's start for a model with no MLflow version (``{"version", "sha256"}``)."""
    return f"v{model['version']}" if model["version"] else model["sha256"][:12]


@gallery_app.command("enrol")
def enrol(ctx: typer.Context, identity: Annotated[str, typer.Argument(help="the person's name or id")],
          photos: Annotated[list[Path], typer.Argument(help="photos showing only this person")],
          as_json: JsonOpt = False) -> None:
    """Enrol IDENTITY from PHOTOs: each must show exactly one face, or nothing is enrolled."""
    def call(gallery: Any, client: Any, _params: Any) -> dict[str, Any]:
        return gallery.enrol(identity, list(zip(map(str, photos), read_photos(photos), strict=True)), client)

    _run(ctx, "enrol", call, lambda r: f"{r['identity']}: {r['enrolled']} face(s) enrolled, "
         f"{r['already_enrolled']} already there (templates {_short(r['template_version'])})", as_json)


@gallery_app.command("remove")
def remove(ctx: typer.Context, identity: Annotated[str, typer.Argument(help="the person to remove")],
           as_json: JsonOpt = False) -> None:
    """Remove IDENTITY: its faces, templates of every version and stored crops."""
    _run(ctx, "remove", lambda gallery, _c, _p: gallery.remove(identity),
         lambda r: f"{r['identity']}: {r['faces_removed']} face(s) and {r['templates_removed']} template(s) removed",
         as_json)


@gallery_app.command("list")
def list_identities(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Enrolled identities, their faces and the model versions their templates exist for."""
    def show(report: dict[str, Any]) -> str:
        lines = [f"{i['identity']}: {i['faces']} face(s)" for i in report["identities"]]
        lines += [f"templates of {_short({'version': v['model_version'], 'sha256': v['model_sha256']})}: "
                  f"{v['templates']} ({v['state']}{', active' if v['active'] else ''})" for v in report["versions"]]
        return "\n".join(lines) or "the gallery is empty"

    _run(ctx, "list", lambda gallery, _c, _p: {"identities": gallery.list(), "versions": gallery.versions()},
         show, as_json)


@gallery_app.command("identify")
def identify(ctx: typer.Context, photo: Annotated[Path, typer.Argument(help="the photo to identify")],
             top_k: Annotated[int | None, typer.Option(min=1, help="identities listed (default gallery.top_k)")] = None,
             as_json: JsonOpt = False) -> None:
    """Who is in PHOTO? The closest enrolled identities; the best one is named only above the served threshold."""
    def call(gallery: Any, client: Any, params: Any) -> dict[str, Any]:
        return gallery.identify(str(photo), read_photos([photo])[0], client, top_k or params.gallery.top_k,
                                _threshold(client, params.gallery.far))

    def show(r: dict[str, Any]) -> str:
        ranked = ", ".join(f"{m['identity']} {m['score']:.3f}" for m in r["matches"])
        verdict = r["identity"] or "unknown"
        return (f"{r['probe']}: {verdict} (threshold {r['threshold']}; {ranked}; probe {_short(r['probe_version'])}"
                f", templates {_short(r['template_version'])})")

    _run(ctx, "identify", call, show, as_json)


@gallery_app.command("verify")
def verify(ctx: typer.Context, identity: Annotated[str, typer.Argument(help="the enrolled person claimed")],
           photo: Annotated[Path, typer.Argument(help="the photo to check")], as_json: JsonOpt = False) -> None:
    """Is PHOTO of IDENTITY? Its best template's score against the served threshold at gallery.far."""
    def call(gallery: Any, client: Any, params: Any) -> dict[str, Any]:
        threshold = _threshold(client, params.gallery.far)
        if threshold is None:
            raise ValueError(f"the served version has no threshold at FAR {params.gallery.far:g} (gallery.far)")
        return gallery.verify(identity, str(photo), read_photos([photo])[0], client, threshold)

    _run(ctx, "verify", call, lambda r: (
        f"{r['probe']}: {'same' if r['same'] else 'not'} {r['identity']} (score {r['score']:.3f}, threshold "
        f"{r['threshold']}; probe {_short(r['probe_version'])}, templates {_short(r['template_version'])})"),
        as_json)


@gallery_app.command("migrate")
def migrate(ctx: typer.Context,
            serving_repository: Annotated[str | None, typer.Option(
                help="the repository whose served version the gallery follows (default "
                     "FACEFORGE_SERVING_REPOSITORY, else publish.serving_repository)")] = None,
            as_json: JsonOpt = False) -> None:
    """Re-embed every enrolled face (from its stored crop) for the version a repository serves now, then enrol
    with it: after the served model changed without a promotion (which does this by itself)."""
    from flows.gallery import migrate_to_served

    _run(ctx, "migrate", lambda gallery, _c, params: migrate_to_served(params, gallery, serving_repository),
         lambda r: f"templates of {_short(r['model'])}"
                   f" ({r['re_embedded']} re-embedded) now enrol; served by {r['repository']} "
                   f"v{r['repository_version']}", as_json)


@gallery_app.command("serve")
def serve(ctx: typer.Context,
          host: Annotated[str, typer.Option(help="address to bind (0.0.0.0 only behind accounts)")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="HTTP port")] = 8010) -> None:
    """The gallery over HTTP (components/gallery/service.py lists the endpoints) until Ctrl-C; accounts from
    FACEFORGE_GALLERY_ENROLLER_* and FACEFORGE_GALLERY_READER_* (without any, everyone may do everything)."""
    import uvicorn

    from components.gallery.service import create_app
    from components.serving.client import FaceClient
    from flows.gallery import open_gallery, service_accounts

    def action() -> dict[str, Any]:
        params = load_params(ctx.obj["params"])
        accounts = service_accounts()
        if host not in ("127.0.0.1", "localhost", "::1") and not accounts:
            raise ValueError(f"--host {host}: set gallery accounts (FACEFORGE_GALLERY_ENROLLER_PASSWORD, "
                             "FACEFORGE_GALLERY_READER_PASSWORD) before serving beyond this machine")
        client = FaceClient(ctx.obj["url"], ctx.obj["protocol"], ctx.obj["model"])
        app = create_app(open_gallery(params), client, _served_threshold(client, params.gallery.far),
                         params.gallery.top_k, accounts)
        uvicorn.run(app, host=host, port=port, log_level="warning")
        return {"stopped": f"http://{host}:{port}"}

    report_errors("gallery serve", action)


def _served_threshold(client: Any, far: float, every_s: float = 5.0) -> Callable[[], float | None]:
    """The served threshold at ``far``, read from Triton again at most every ``every_s`` seconds: it changes
    when a promotion switches the served version."""
    import time

    from components.evaluation.roc import rate_key

    cached: dict[str, Any] = {"at": -every_s, "value": None}

    def threshold() -> float | None:
        if time.monotonic() - cached["at"] >= every_s:
            client.refresh()
            cached.update(at=time.monotonic(), value=client.thresholds().get(rate_key("far", far)))
        return cached["value"]

    return threshold
