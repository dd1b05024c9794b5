"""Start the real ``tritonserver`` shipped in the ``nvidia-pytriton`` wheel on 127.0.0.1, for validation and tests.

The wheel carries Triton 2.51 with the python backend only. Three things make it run outside pytriton:
its bundled shared libraries (``nvidia_pytriton.libs``) on ``LD_LIBRARY_PATH``; a backend directory holding
the python backend plus the stub built for *this* interpreter's version; and this interpreter's
``libpython`` / ``PYTHONHOME`` so the stub embeds the same Python (``PYTHONPATH`` then points at our
site-packages, which the generated ``model.py`` adds to its path).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlparse

import tritonclient.http as triton_http


class TritonError(RuntimeError):
    """Triton could not start or refused the repository; the message carries Triton's own log lines."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def triton_repository_path(repository: Path | str) -> str:
    """A folder as an absolute path; ``s3://bucket/prefix`` in Triton's own form, which names a non-AWS endpoint
    (MinIO, a test server) inside the URL: ``s3://http://host:port/bucket/prefix`` from ``AWS_ENDPOINT_URL``.
    Credentials reach Triton through the usual ``AWS_*`` variables of its environment."""
    text = str(repository)
    if not text.startswith("s3://"):
        return str(Path(text).resolve())
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").rstrip("/")
    if not endpoint:
        return text
    parsed = urlparse(endpoint)
    if not parsed.port:
        raise TritonError(f"AWS_ENDPOINT_URL={endpoint}: Triton needs an explicit port for a non-AWS S3 endpoint")
    return f"s3://{parsed.scheme}://{parsed.hostname}:{parsed.port}/{text.removeprefix('s3://').strip('/')}"


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")  # located, not imported: its Python client needs numpy<2
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("the nvidia-pytriton wheel (tritonserver binary) is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0])


def stub_site() -> Path:
    """Where ``make setup`` installs numpy<2 for the bundled python-backend stub (infra/triton/stub-requirements.txt):
    the stub was built against numpy 1.x, and bytes tensors (TYPE_STRING) only exist as numpy object arrays."""
    return Path(sys.prefix) / "triton-stub"


class TritonServer:
    """``with TritonServer(repo) as server:`` -> ready server; ``server.http_url`` / ``server.grpc_url``, and
    ``server.metrics_url`` (Prometheus text: Triton's ``nv_*`` and the photo-in model's ``faceforge_*``) unless
    ``metrics=False``."""

    def __init__(self, repository: Path | str, startup_timeout_s: float = 120.0, model_control: str = "none",
                 http_port: int | None = None, grpc_port: int | None = None, poll_s: int = 1,
                 metrics: bool = True, metrics_port: int | None = None, capture: Path | str | None = None,
                 capture_retention_days: float | None = None) -> None:
        """``capture``: a folder where the photo-in model keeps a window of live traffic for the drift check
        (components/monitoring/capture.py), its chunks deleted after ``capture_retention_days``; None keeps
        none."""
        self.repository = triton_repository_path(repository)
        self.poll_s = poll_s
        self.timeout = startup_timeout_s
        self.model_control = model_control
        self.http_port, self.grpc_port = http_port or free_port(), grpc_port or free_port()
        self.http_url, self.grpc_url = f"127.0.0.1:{self.http_port}", f"127.0.0.1:{self.grpc_port}"
        self.metrics_port = (metrics_port or free_port()) if metrics else None
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None
        self.capture = Path(capture).resolve() if capture else None
        self.capture_retention_days = capture_retention_days
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    def _backend_dir(self, root: Path) -> Path:
        server = pytriton_root() / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonError(f"{stub}: no python backend stub for Python {version} in the pytriton wheel")
        backend = root / "backends" / "python"
        backend.mkdir(parents=True)
        for item in (server / "backends" / "python").iterdir():
            (backend / item.name).symlink_to(item)
        (backend / stub.name).symlink_to(stub)
        return root / "backends"

    def _environment(self) -> dict[str, str]:
        libs = pytriton_root().parent / "nvidia_pytriton.libs"
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(libs), env.get("LD_LIBRARY_PATH")) if p)
        env["PYTHONHOME"] = sys.base_prefix
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).is_dir())
        if stub_site().is_dir():  # numpy<2 for the stub's bytes tensors (components/serving/pipeline_model.py)
            env["FACEFORGE_STUB_SITE"] = str(stub_site())
        for name in ("FACEFORGE_CAPTURE", "FACEFORGE_CAPTURE_RETENTION_DAYS"):
            env.pop(name, None)
        if self.capture is not None:
            env["FACEFORGE_CAPTURE"] = str(self.capture)
            if self.capture_retention_days:
                env["FACEFORGE_CAPTURE_RETENTION_DAYS"] = str(self.capture_retention_days)
        return env

    def _metrics_options(self) -> list[str]:
        """Triton's metrics endpoint on 127.0.0.1, as the container serves it on 8002; no GPU metrics (CPU)."""
        if self.metrics_port is None:
            return ["--allow-metrics=false"]
        return ["--allow-metrics=true", "--allow-gpu-metrics=false", "--metrics-address=127.0.0.1",
                f"--metrics-port={self.metrics_port}"]

    def __enter__(self) -> TritonServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="faceforge-triton-")
        root = Path(self._tmp.name)
        binary = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        self._log = root / "tritonserver.log"
        command = [str(binary), f"--model-repository={self.repository}",
                   f"--backend-directory={self._backend_dir(root)}", "--http-address=127.0.0.1",
                   f"--http-port={self.http_port}", "--grpc-address=127.0.0.1",
                   f"--grpc-port={self.grpc_port}", "--exit-on-error=true", "--strict-readiness=true",
                   f"--model-control-mode={self.model_control}", *self._metrics_options()]
        if self.model_control == "poll":
            command.append(f"--repository-poll-secs={self.poll_s}")
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._environment(),
                                             start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        # Closed once ready: an idle keep-alive connection makes Triton's shutdown wait its full exit timeout.
        client = triton_http.InferenceServerClient(self.http_url)
        try:
            self._poll_ready(client)
        finally:
            client.close()

    def _poll_ready(self, client: triton_http.InferenceServerClient) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TritonError(f"tritonserver exited ({self._process.returncode}) on {self.repository}:\n"
                                  + self.errors())
            try:
                if client.is_server_ready():
                    return
            except Exception:  # connection refused while it starts: keep polling
                pass
            time.sleep(0.25)
        raise TritonError(f"tritonserver not ready after {self.timeout:.0f} s:\n{self.errors()}")

    @property
    def pid(self) -> int:
        """The tritonserver process (its python-backend stubs are its children)."""
        if self._process is None:
            raise TritonError("tritonserver is not running")
        return self._process.pid

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log and self._log.exists() else ""

    def errors(self) -> str:
        """Triton's own error lines (E... / 'failed to load'), the part a user needs to fix the repository."""
        lines = [ln for ln in self.log().splitlines() if ln.startswith("E") or "failed to load" in ln
                 or "error:" in ln.lower()]
        lines = [ln for ln in lines if "CudaDriverHelper" not in ln]  # CPU machines: not an error
        return "\n".join(lines[-20:]) or self.log()[-2000:]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._tmp is not None:
            if exc is not None and self._log is not None and self._log.exists():
                shutil.copy(self._log, Path(tempfile.gettempdir()) / "faceforge-tritonserver-last.log")
            self._tmp.cleanup()
