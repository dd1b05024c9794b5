"""Turn aligned 112x112 RGB faces into embeddings with a trained backbone, in PyTorch or ONNX Runtime.

Both take uint8 RGB batches and apply the training normalisation ``(rgb / 127.5) - 1`` themselves, so the
evaluation code is the same whichever format is measured (the quantize stage compares FP32 and INT8 ONNX
with exactly the same faces and protocol as the PyTorch model).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from components.align.model_input import to_input
from components.models.loading import load_backbone

__all__ = ["Embedder", "OnnxEmbedder", "TorchEmbedder", "embed_batches", "load_embedder", "to_input"]


class Embedder(Protocol):
    embedding_size: int

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        """uint8 [N, 112, 112, 3] RGB -> float32 [N, D], not normalised."""
        ...


class TorchEmbedder:
    def __init__(self, backbone: torch.nn.Module, embedding_size: int) -> None:
        self.model = backbone.eval()
        self.embedding_size = embedding_size

    @classmethod
    def from_dir(cls, model_dir: Path | str) -> TorchEmbedder:
        """Load ``backbone.pth`` + ``model.json`` as written by the train stage."""
        model, config = load_backbone(model_dir)
        return cls(model, int(config["embedding_size"]))

    @torch.inference_mode()
    def __call__(self, faces: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(to_input(faces))).float().numpy()


class OnnxEmbedder:
    def __init__(self, path: Path | str, providers: list[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort  # deferred: the PyTorch path should not pay for loading ORT

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.embedding_size = int(self.session.get_outputs()[0].shape[-1])

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: to_input(faces)})[0].astype(np.float32)


def load_embedder(path: Path | str) -> Embedder:
    """A ``.onnx`` file runs in ONNX Runtime; a folder with ``backbone.pth`` + ``model.json`` in PyTorch."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxEmbedder(path)
    return TorchEmbedder.from_dir(path if path.is_dir() else path.parent)


def embed_batches(embedder: Embedder, batches: Iterable[np.ndarray], total: int, flip: bool = True) -> np.ndarray:
    """Embed every face; with ``flip`` each embedding is the sum of the face's and its mirror image's.

    Summing before normalisation (rather than averaging normalised vectors) is the InsightFace test-time
    convention, so scores are comparable with published results.
    """
    out = np.empty((total, embedder.embedding_size), np.float32)
    done = 0
    with tqdm(total=total, desc="embed", unit="face", disable=None) as bar:
        for faces in batches:
            feats = embedder(faces)
            if flip:
                feats = feats + embedder(np.ascontiguousarray(faces[:, :, ::-1]))
            out[done:done + len(faces)] = feats
            done += len(faces)
            bar.update(len(faces))
    if done != total:
        raise RuntimeError(f"embedded {done} faces, expected {total}")
    return out
