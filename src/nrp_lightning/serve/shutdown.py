"""How ``nrp-serve`` ends whole: SIGTERM or SIGINT to its main process stops every process it started.

LitServe runs the API server (uvicorn) in a forked process, each inference worker in a spawned one
and its queues in a multiprocessing manager, and it stops them only on KeyboardInterrupt in the main
process. So ``kill PID`` (SIGTERM, also what ``docker stop`` and systemd send) ended the main process
alone and left the API server and the workers running, re-parented to PID 1, the port still taken;
a server started in the background of a script inherits SIGINT ignored and did not stop on it at all.
Three layers, each enough for what the one before misses:

- ``stop_on_signals``: in the main process SIGTERM and SIGINT raise KeyboardInterrupt, and LitServe
  shuts down as on Ctrl-C (uvicorn closes the port, the workers are terminated);
- ``end_children``: whatever is still alive after that (a signal that came while the workers were
  starting, before LitServe's own handling) is terminated, then killed;
- ``die_with_parent``: every child asks Linux to send it SIGTERM when the main process dies
  (``PR_SET_PDEATHSIG``), so that even ``kill -9`` of the main process leaves nothing behind.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHILD_GRACE = 5.0  # s a child has to exit after SIGTERM before it is killed
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Have Linux send this process SIGTERM when its parent (``parent_pid``) dies; end now if it
    already has. Linux sends it when the thread that started the child exits: LitServe starts its
    processes from the main thread. Nothing on other systems (the main process's handlers still apply)."""
    if not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:  # the parent died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def in_worker_process() -> None:
    """Call first thing in a spawned inference worker (``ImageAPI.setup``): it dies with the main
    process, and leaves SIGINT to it (Ctrl-C reaches the whole process group; the main process ends
    the workers itself). Nothing when not run in a multiprocessing child (a test calling ``setup``)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent.pid)


def stop_on_signals(prog: str) -> None:
    """In the main process, before ``LitServer.run``: SIGTERM and SIGINT raise KeyboardInterrupt
    (LitServe's graceful shutdown), whatever handlers were inherited; processes forked from here on
    (the API server, the manager) get the inherited handlers back and die with this process."""
    inherited = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    forking_pid = os.getpid()

    def stop(signum: int, frame) -> None:
        print(f"{prog}: {signal.Signals(signum).name}, stopping the server and its workers", file=sys.stderr,
              flush=True)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def in_forked_child() -> None:
        for signum, handler in inherited.items():
            signal.signal(signum, handler)
        die_with_parent(forking_pid)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    os.register_at_fork(after_in_child=in_forked_child)


def end_children(grace: float = CHILD_GRACE) -> None:
    """Terminate the multiprocessing children still alive, kill those alive ``grace`` s later, and wait
    for them. Further stop signals are ignored meanwhile: this is bounded, and must not be cut short."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.is_alive():
            child.kill()
            child.join()
