"""A server as a child process: started, waited for until it answers, stopped by its own process id.

Used by ``faceforge serve-flows`` (a local Prefect server: the ephemeral API runs no scheduler, so schedules
would never fire on it) and by the tests and benchmarks that start a team's servers on 127.0.0.1. Each server
runs in its own process group and is stopped by its process id (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


def answers(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    return check


class ServerProcess:
    """One server: started, waited for until ``ready()`` holds, stopped or killed by its process id."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path,
                 ready: Callable[[], bool], startup_timeout_s: float = 180.0, cwd: Path | None = None,
                 stop_with_parent: bool = False) -> None:
        """``stop_with_parent``: the server gets SIGTERM when this process dies, by any signal (Linux; see
        flows/parent_guard.py), not only when it exits through ``stop``."""
        self.name, self.command, self.env, self.log, self.ready = name, command, env, log, ready
        self.timeout, self.cwd, self.stop_with_parent = startup_timeout_s, cwd, stop_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        command = self.command
        if self.stop_with_parent and sys.platform == "linux":
            command = [sys.executable, "-m", "flows.parent_guard", str(os.getpid()), *command]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.cwd, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {self.timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def _signal_group(self, sig: int, wait_s: float) -> bool:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)  # its own group (start_new_session): uvicorn/gunicorn children too
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=wait_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after 30 s; then SIGKILL whatever is left in the group (a leader that
        exits first, as ``ray start --block`` does, can leave its daemons behind)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM, 30)
        self._signal_group(signal.SIGKILL, 30)

    def kill(self) -> None:
        """What a crash looks like: SIGKILL, no shutdown."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL, 30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def prefect_server(home: Path, port: int, logs: Path, ui: bool = False, stop_with_parent: bool = False,
                   auth_string: str | None = None) -> ServerProcess:
    """``prefect server start`` on 127.0.0.1 with its default SQLite database under ``home``; with
    ``auth_string`` (``user:password``) every API call but the health check must carry it."""
    # analytics: this process's own setting, off unless the user turned it on (flows/__init__.py)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_UI_ENABLED=str(ui).lower())
    if auth_string:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    return ServerProcess("prefect server", [str(prefect), "server", "start", "--host", "127.0.0.1",
                                            "--port", str(port)], env, logs / "prefect-server.log",
                         answers(f"http://127.0.0.1:{port}/api/health"), stop_with_parent=stop_with_parent)
