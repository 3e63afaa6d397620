"""Talking to ``nrp-serve`` from Python with the standard library: start one on a free port and wait
for its health route (``running_server``, ``wait_healthy``), and post to it (``post``). The tests and
the load test (``benchmarks/serve_load.py``) use these; a client needs nothing of this package but
``post``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Iterator, Sequence

STARTUP_TIMEOUT = 900.0  # s: spawned workers import torch and load their models; a 2-core CPU shared with training is slow
SHUTDOWN_TIMEOUT = 30.0


@dataclass
class Answer:
    """An HTTP answer: ``status``, ``content_type`` and ``body`` (bytes)."""

    status: int
    content_type: str
    body: bytes

    def json(self):
        import json

        return json.loads(self.body)


def post(url: str, body: bytes, content_type: str = "application/octet-stream", timeout: float = 600.0) -> Answer:
    """POST ``body`` to ``url``; 4xx and 5xx answers are returned, not raised."""
    return _send(urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type}), timeout)


def get(url: str, timeout: float = 10.0) -> Answer:
    """GET ``url``; 4xx and 5xx answers are returned, not raised."""
    return _send(urllib.request.Request(url), timeout)


def _send(request: urllib.request.Request, timeout: float) -> Answer:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.headers.get("Content-Type", ""), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers.get("Content-Type", ""), exc.read())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(args: Sequence[str] = (), command: str = "nrp-serve",
                   startup_timeout: float = STARTUP_TIMEOUT) -> Iterator[str]:
    """``nrp-serve ARGS`` (or ``nrp-demo-page``) on a free port of 127.0.0.1, in its own process group;
    yields its base URL once ``/health`` answers ok, and stops it (SIGTERM, which ends its workers) on
    exit. Its log goes to a temporary file, quoted on failure."""
    port = free_port()
    module = "serve_main" if command == "nrp-serve" else "demo_page_main"
    code = f"import sys; from nrp_lightning.serve.cli import {module}; sys.exit({module}(sys.argv[1:]))"
    log = tempfile.NamedTemporaryFile(prefix="nrp-serve-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "-c", code, "--port", str(port), *args], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url, log.name, command, startup_timeout)
        yield url
    finally:
        _stop(process)
        log.close()
        os.unlink(log.name)


def wait_healthy(process: subprocess.Popen, url: str, log: str, command: str = "nrp-serve",
                 timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until the server ``process`` at ``url`` answers ok on ``/health``; raise, quoting the end of
    its ``log`` file, if it exits first or is not healthy after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited with {process.returncode} before it was up:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{command} not healthy after {timeout:.0f} s:\n{_tail(log)}")
        with contextlib.suppress(OSError):
            if get(f"{url}/health", timeout=2).status == 200:
                return
        time.sleep(0.5)


def _tail(path: str, lines: int = 40) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server; its process group is killed if anything of it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the group is this server's own: start_new_session above
    process.wait()
