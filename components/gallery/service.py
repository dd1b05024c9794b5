"""``faceforge gallery serve``: the gallery over HTTP, for applications that enrol and identify people.

A small FastAPI service next to Triton rather than a Triton model (docs/gallery.md, "Why a service"): enrol and
remove are writes to a database with accounts, not inferences; identify is one photo-in inference plus a search.
Photos go to the served photo-in model; answers name the probe's and the templates' model versions.

- ``POST /v1/identify?top_k=5`` (body: the photo's bytes) -> matches, the served threshold, the identity or null
- ``POST /v1/verify/{identity}`` (body: the photo's bytes) -> score, threshold, same
- ``POST /v1/identities/{identity}`` (JSON ``{"photos": [{"name": ..., "data": base64}]}``) -> enrolled
- ``DELETE /v1/identities/{identity}``, ``GET /v1/identities``, ``GET /v1/versions``, ``GET /healthz``
- ``GET /metrics``: Prometheus text (components/gallery/metrics.py); open like ``/healthz``, since a scraper
  carries no account and the series hold counts and scores, no names or faces

Accounts (team mode, in the pattern of the MLflow accounts, flows/accounts.py): ``FACEFORGE_GALLERY_ENROLLER_*``
may enrol, remove and everything else; ``FACEFORGE_GALLERY_READER_*`` may only identify, verify and list. With
no account configured the service answers anyone, which is why it binds 127.0.0.1 unless told otherwise.
Every refusal is one line in ``{"error": ...}``; nothing is changed by a refused request.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run time, and those
# naming this module's closures (the account checks) cannot be resolved from strings.

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from prometheus_client import CONTENT_TYPE_LATEST
from tritonclient.utils import InferenceServerException

from components.gallery.gallery import Gallery, GalleryError, PhotoEmbedder
from components.gallery.metrics import GalleryMetrics

ROLES = ("enroller", "reader")  # an enroller may do all a reader may


@dataclass(frozen=True)
class ServiceAccount:
    role: str
    username: str
    password: str


def create_app(gallery: Gallery, embedder: PhotoEmbedder, threshold: Callable[[], float | None], top_k: int,
               accounts: list[ServiceAccount]) -> FastAPI:
    """The service; ``threshold()`` is the served version's accept threshold (read per request: it changes with
    the served version)."""
    app = FastAPI(title="faceforge gallery", summary="Enrolled people, identified through the served model")
    basic = HTTPBasic(auto_error=False)
    metrics = GalleryMetrics()

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Any]) -> Any:
        response = await call_next(request)
        route = request.scope.get("route")  # the path template, so /v1/verify/{identity} is one series
        metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).inc()
        return response

    def role(credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)]) -> str:
        if not accounts:
            return "enroller"
        for account in accounts:
            if credentials is not None and secrets.compare_digest(credentials.username, account.username) and \
                    secrets.compare_digest(credentials.password, account.password):
                return account.role
        raise HTTPException(401, "a gallery account's user name and password are needed",
                            headers={"WWW-Authenticate": 'Basic realm="faceforge gallery"'})

    def enroller(who: Annotated[str, Depends(role)]) -> str:
        if who != "enroller":
            raise HTTPException(403, f"the {who} account may identify and verify, not enrol or remove")
        return who

    @app.exception_handler(GalleryError)
    def refused(_request: Request, exc: GalleryError) -> JSONResponse:
        status = 404 if "no such identity" in str(exc) else 409 if "retry" in str(exc) else 400
        return JSONResponse({"error": str(exc).splitlines()[0]}, status_code=status)

    @app.exception_handler(InferenceServerException)
    def triton_down(_request: Request, exc: InferenceServerException) -> JSONResponse:
        return JSONResponse({"error": f"the served photo-in model did not answer: {exc.message() or exc}"},
                            status_code=503)

    @app.exception_handler(HTTPException)
    def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def photo(request: Request) -> bytes:
        data = await request.body()
        if not data:
            raise HTTPException(400, "the request body must be the photo's bytes (JPEG, PNG, ...)")
        return data

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        active = gallery.active()
        return {"ok": True, "active_version": active.json() if active else None}

    @app.get("/metrics")
    def exposition() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/identify")
    def identify(data: Annotated[bytes, Depends(photo)], _who: Annotated[str, Depends(role)],
                 k: Annotated[int, Query(alias="top_k", ge=1, le=100)] = top_k) -> dict[str, Any]:
        answer = gallery.identify("photo", data, embedder, max(k, 2), threshold())  # two: the top-1 lead
        metrics.identified(answer)
        return answer | {"matches": answer["matches"][:k]}

    @app.post("/v1/verify/{identity}")
    def verify(identity: str, data: Annotated[bytes, Depends(photo)],
               _who: Annotated[str, Depends(role)]) -> dict[str, Any]:
        accept = threshold()
        if accept is None:
            raise HTTPException(409, "the served version has no threshold at the gallery's FAR (gallery.far)")
        answer = gallery.verify(identity, "photo", data, embedder, accept)
        metrics.verified(answer)
        return answer

    @app.post("/v1/identities/{identity}")
    def enrol(identity: str, body: Annotated[dict[str, Any], Body()],
              _who: Annotated[str, Depends(enroller)]) -> dict[str, Any]:
        photos = body.get("photos")
        if not isinstance(photos, list) or not photos:
            raise HTTPException(400, 'expected JSON {"photos": [{"name": "...", "data": "<base64>"}, ...]}')
        try:
            decoded = [(str(p.get("name", f"photo{i}")), base64.b64decode(p["data"], validate=True))
                       for i, p in enumerate(photos)]
        except (KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise HTTPException(400, f"photos[]: each needs base64 'data' ({exc})") from None
        return gallery.enrol(identity, decoded, embedder)

    @app.delete("/v1/identities/{identity}")
    def remove(identity: str, _who: Annotated[str, Depends(enroller)]) -> dict[str, Any]:
        return gallery.remove(identity)

    @app.get("/v1/identities")
    def identities(_who: Annotated[str, Depends(role)]) -> list[dict[str, Any]]:
        return gallery.list()

    @app.get("/v1/versions")
    def versions(_who: Annotated[str, Depends(role)]) -> list[dict[str, Any]]:
        return gallery.versions()

    return app
