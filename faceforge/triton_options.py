"""Options of every command that calls the served photo-in model (`faceforge client`, `faceforge gallery`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

UrlOpt = Annotated[str, typer.Option(help="Triton's gRPC (default) or HTTP address")]
ProtocolOpt = Annotated[str, typer.Option(help="grpc | http")]
ModelOpt = Annotated[str, typer.Option(help="the photo-in model's name")]


def triton_target(url: str, protocol: str, model: str) -> dict[str, Any]:
    """What ``FaceClient`` is built from, the protocol checked."""
    if protocol not in ("grpc", "http"):
        raise typer.BadParameter(f"--protocol {protocol}: use grpc or http")
    return {"url": url, "protocol": protocol, "model": model}
