"""``python -m flows.parent_guard PARENT_PID COMMAND...``: run COMMAND so that it gets SIGTERM when the process
that started it dies, however it dies (SIGTERM from systemd or Docker to that process alone, SIGKILL, a crash).

Linux's ``prctl(PR_SET_PDEATHSIG)`` survives ``exec``, so it is set here and the command then replaces this
process. Without it, a server that ``faceforge serve-flows`` started in a session of its own (so that a Ctrl-C
in the terminal reaches serve-flows, which stops it in order) outlived serve-flows whenever serve-flows was
stopped by a signal it could not finish handling.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the guard was set: nothing to serve
        sys.exit(0)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
