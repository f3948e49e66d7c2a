"""Small helpers shared by the test harnesses that run real servers (rsyslog, SeaweedFS,
Azurite, the GCS emulator, PostgreSQL, HTTP receivers), all on 127.0.0.1 only."""

from __future__ import annotations

import ctypes
import signal
import socket

HOST = "127.0.0.1"


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn``: the kernel SIGTERMs the child if the thread that started it dies (a
    killed pytest), so no server outlives the tests. Call it after any user switch: a
    credential change clears the setting."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
