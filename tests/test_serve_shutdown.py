"""A stop signal to the main process of ``nrp-serve`` or ``nrp-demo-page`` ends every process it started
and frees the port within seconds (``serve/shutdown.py``): LitServe's API server and inference workers
outlived a SIGTERM before, re-parented to PID 1 and still listening. Starts the real console scripts;
reads /proc (Linux)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nrp_lightning.serve.client import free_port, wait_healthy

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc (Linux)")]
STOP_TIMEOUT = 10.0  # s from the signal to an empty process group and a free port


def stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (state, ppid, pgrp, ...), or None for no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def processes() -> dict[int, list[str]]:
    return {int(d): fields for d in os.listdir("/proc") if d.isdigit() and (fields := stat(int(d)))}


def descendants(pid: int) -> set[int]:
    """Children of ``pid``, their children, and so on."""
    parents = {p: int(fields[1]) for p, fields in processes().items()}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int], group: int) -> set[int]:
    """Those of ``pids`` and the members of process group ``group`` that still run (a zombie does not:
    it holds no port and no memory, and only waits to be reaped)."""
    table = processes()
    return {p for p, fields in table.items() if (p in pids or int(fields[2]) == group) and fields[0] != "Z"}


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (SO_REUSEADDR, as uvicorn binds: closed
    connections in TIME_WAIT do not count, a listening socket does)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("command,signum", [
    ("nrp-serve", signal.SIGTERM),      # kill PID, docker stop, systemd
    ("nrp-demo-page", signal.SIGINT),   # started as a script's background job: SIGINT inherited ignored
    ("nrp-serve", signal.SIGKILL),      # no handler runs: the children die with their parent (PR_SET_PDEATHSIG)
], ids=["nrp-serve-SIGTERM", "nrp-demo-page-SIGINT-inherited-ignored", "nrp-serve-SIGKILL"])
def test_a_stop_signal_ends_the_server_whole(command, signum, tmp_path):
    script = shutil.which(command, path=str(Path(sys.executable).parent)) or shutil.which(command)
    assert script, f"{command} is not installed next to {sys.executable}: pip install -e ."
    port, log = free_port(), tmp_path / "server.log"
    argv = [script, "--accelerator", "cpu", "--port", str(port)]
    if signum == signal.SIGINT:  # what a shell does to a background job when job control is off
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}", str(log), command)
        started = descendants(process.pid)
        assert len(started) >= 4, started  # the manager, the API server, two or three inference workers
        assert not port_free(port)

        process.send_signal(signum)
        sent, left, free = time.monotonic(), started, False
        while time.monotonic() - sent < STOP_TIMEOUT:
            left, free = running(started | {process.pid}, process.pid), port_free(port)
            if not left and free:
                break
            time.sleep(0.2)
        table = processes()
        assert not left, {p: table.get(p) for p in left}
        assert free, f"port {port} still taken {STOP_TIMEOUT:.0f} s after {signum.name}"
        if signum != signal.SIGKILL:
            assert process.wait(STOP_TIMEOUT) == 0
            assert f"{signum.name}, stopping the server and its workers" in log.read_text()
    finally:
        if running(set(), process.pid):  # what a failed case left behind
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
