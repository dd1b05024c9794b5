"""Triton python-backend model ``faceforge-pipeline``: encoded photos in, embedding + face + status out.

Copied into each published pipeline version as ``model.py``, next to ``detector.onnx``, ``pipeline.json`` and
the ``components/`` modules it imports (docs/architecture.md, "Photo-in serving"): a version runs the detect
and align code it was published with, whatever is installed in the Triton image. Faces are embedded by one
BLS call per execute into ``faceforge-embedder`` at the version named in ``pipeline.json``, so the photo-in
answer comes from exactly the embedder version served next to it (ONNX Runtime or TensorRT on the GPU).

Bytes inputs and outputs (``TYPE_STRING``) exist only as numpy object arrays in the python backend, whose
stub was built against numpy 1.x: where ``FACEFORGE_STUB_SITE`` names a folder holding numpy<2 (``make setup``
installs one for the bundled Triton), it goes first on the path, before anything imports numpy.
"""

import json
import os
import site
import sys
import time

_VERSION_DIR = os.path.dirname(os.path.abspath(__file__))
# The stub embeds Python with an isolated configuration that ignores PYTHONPATH; honour it here so the
# server's environment (e.g. a virtualenv with onnxruntime and OpenCV) is importable.
for _entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _entry and _entry not in sys.path:
        site.addsitedir(_entry)
sys.path.insert(0, _VERSION_DIR)  # this version's own components/, ahead of any installed faceforge
if os.environ.get("FACEFORGE_STUB_SITE"):
    sys.path.insert(0, os.environ["FACEFORGE_STUB_SITE"])

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from components.align.model_input import to_input  # noqa: E402
from components.monitoring.capture import CaptureWriter, capture_rows  # noqa: E402
from components.serving.photo import PhotoFace, PhotoFaces, PhotoSettings  # noqa: E402
from components.serving.photo_metrics import PhotoMetrics  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "pipeline.json")) as f:
            spec = json.load(f)
        self.faces = PhotoFaces(os.path.join(version_dir, "detector.onnx"), PhotoSettings(**spec["photo"]))
        self.embedder = spec["embedder"]
        self.embedding_size = int(spec["embedder"]["embedding_size"])
        self.image_size = int(spec["photo"]["image_size"])
        # Which model embedded each answer, so a gallery never compares templates across versions.
        embedder = spec["embedder"]
        self.model = [embedder["sha256"].encode(), str(embedder.get("mlflow_model_version") or "").encode()]
        # Per registered version; a version never registered (a bare publish) by its embedder's Triton version.
        registered = embedder.get("mlflow_model_version")
        version = str(registered) if registered else f"triton-{embedder['version']}"
        self.metrics = PhotoMetrics(pb_utils, version)
        # The drift check's window of live traffic (components/monitoring/capture.py), where Triton is told one.
        capture, retention = os.environ.get("FACEFORGE_CAPTURE"), os.environ.get("FACEFORGE_CAPTURE_RETENTION_DAYS")
        self.capture = (CaptureWriter(capture, version, self.embedding_size, float(retention) if retention else None)
                        if capture else None)

    def _face(self, photo, name):
        """The photo's face; anything the photo code did not foresee is this photo's status, not the batch's."""
        try:
            return self.faces(photo, name)
        except Exception as exc:  # noqa: BLE001 - one photo must never fail the others
            return PhotoFace("bad_image", f"unreadable: {name}: {type(exc).__name__}: {exc}")

    def _embed(self, crops):
        """L2-normalised embeddings of aligned uint8 crops, in the embedder's batch-size chunks."""
        out = []
        step = max(1, int(self.embedder["max_batch_size"]))
        for start in range(0, len(crops), step):
            batch = to_input(np.stack(crops[start:start + step]))
            request = pb_utils.InferenceRequest(
                model_name=self.embedder["model"], model_version=int(self.embedder["version"]),
                requested_output_names=[self.embedder["output"]],
                inputs=[pb_utils.Tensor(self.embedder["input"], batch)])
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"{self.embedder['model']} version {self.embedder['version']}: "
                                   f"{response.error().message()}")
            out.append(pb_utils.get_output_tensor_by_name(response, self.embedder["output"]).as_numpy())
        embeddings = np.concatenate(out).astype(np.float32)
        return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)

    def execute(self, requests):
        per_request = []
        for request in requests:
            photos = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            per_request.append([self._face(bytes(photo), f"image[{i}]") for i, photo in enumerate(photos)])
        self.metrics.record(len(requests), [face for faces in per_request for face in faces])
        crops = [face.crop for faces in per_request for face in faces if face.status == "ok"]
        try:
            embedded = iter(self._embed(crops)) if crops else iter(())
        except RuntimeError as exc:  # the embedder is down or reloading: these requests fail, the model stays up
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        responses = []
        zeros = np.zeros(self.embedding_size, np.float32)
        blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        now = time.time()
        for faces in per_request:
            vectors = [next(embedded) if f.status == "ok" else None for f in faces]
            capture_rows(self.capture, now, faces, vectors)
            outputs = {
                "embedding": np.stack([zeros if v is None else v for v in vectors]),
                "bbox": np.stack([f.bbox for f in faces]).astype(np.float32),
                "landmarks": np.stack([f.landmarks for f in faces]).astype(np.float32),
                "det_score": np.array([[f.score] for f in faces], np.float32),
                "status": np.array([[f.status.encode()] for f in faces], dtype=np.object_),
                "detail": np.array([[f.detail.encode()] for f in faces], dtype=np.object_),
                "faces": np.array([[f.faces] for f in faces], np.int32),
                "crop": np.stack([f.crop if f.status == "ok" else blank for f in faces]),
                "model_sha256": np.array([[self.model[0]] for _ in faces], dtype=np.object_),
                "model_version": np.array([[self.model[1]] for _ in faces], dtype=np.object_),
            }
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        return responses

    def finalize(self):
        if self.capture is not None:
            self.capture.flush()
