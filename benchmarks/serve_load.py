"""Load test of ``nrp-serve``: throughput and latency of ``POST /purify`` against the batch size.

For each ``--batch-sizes`` value it starts ``nrp-serve --max-batch-size B`` on a free port of
127.0.0.1 (or uses ``--url``, one row), sends a few warm-up requests, then runs ``--clients``
concurrent clients for ``--seconds``: each posts an embedded photo, waits for the answer and posts
again. Clients send nothing new after the time is up but wait for every answer they are owed, so
every request is counted. A request is answered when it gets 200 and a PNG of the photo's size;
anything else (an error status, a wrong PNG, a connection error) counts as lost, and any loss makes
the exit status 1. Writes a Markdown table (``--out``) and prints it.

    python benchmarks/serve_load.py                           # CPU: batch sizes 1 2 4 8, 8 clients, 30 s each
    python benchmarks/serve_load.py --accelerator cuda --clients 32 --size 512   # the same on a GPU
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --seconds 5      # an nrp-serve already running
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from nrp_lightning.serve.client import post, running_server

WARMUP_REQUESTS = 3


@dataclass
class LoadResult:
    """What ``run_load`` saw: latencies (s) of the answered requests, failures as text."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.latencies) + len(self.failures)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def photo_png(size: int) -> bytes:
    """The centre square of scikit-image's ``chelsea``, resized to ``size`` px, as PNG bytes."""
    from nrp_lightning.eval_data import center_square
    from nrp_lightning.images import array_to_tensor, png_bytes
    import skimage.data

    return png_bytes(center_square(array_to_tensor(skimage.data.chelsea()), size))


def run_load(url: str, body: bytes, clients: int, seconds: float, route: str = "/purify") -> LoadResult:
    """``clients`` threads posting ``body`` to ``url + route`` back to back for ``seconds``; every
    request sent is waited for. Answers must be 200 PNGs of the size of ``body``'s image."""
    expected = Image.open(io.BytesIO(body)).size
    result = LoadResult(seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                answer = post(url + route, body, "image/png")
                problem = None if answer.status == 200 else f"{answer.status}: {answer.body[:200]!r}"
                if problem is None and Image.open(io.BytesIO(answer.body)).size != expected:
                    problem = "a PNG of the wrong size"
            except OSError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            with lock:
                if problem is None:
                    result.latencies.append(time.monotonic() - started)
                else:
                    result.failures.append(problem)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started  # includes the wait for the last answers
    return result


def row(label: str, result: LoadResult, load: float) -> str:
    answered = len(result.latencies)
    return (f"| {label} | {result.sent} | {answered} | {len(result.failures)} | {answered / result.seconds:.2f} | "
            f"{1000 * result.percentile(0.5):.0f} | {1000 * result.percentile(0.99):.0f} | {load:.1f} |")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="nrp-serve --batch-timeout (default 0.01 s)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time each batch size is loaded (default 30)")
    parser.add_argument("--size", type=int, default=224, help="side of the square photo posted, px (default 224)")
    parser.add_argument("--accelerator", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--timeout", type=float, default=600.0, help="nrp-serve --timeout: queue wait before a 504, "
                        "which counts as lost (default 600 s)")
    parser.add_argument("--checkpoint", help="purifier (default: the shipped one)")
    parser.add_argument("--url", help="load an nrp-serve that is already running instead (one row)")
    parser.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = parser.parse_args(argv)

    body = photo_png(args.size)
    header = ["| max batch size | requests | answered | lost | throughput (req/s) | p50 latency (ms) | p99 latency (ms) "
              "| load average before |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows, lost = [], 0

    def measure(url: str, label: str) -> None:
        nonlocal lost
        for _ in range(WARMUP_REQUESTS):
            post(url + "/purify", body, "image/png")
        load = os.getloadavg()[0]  # other jobs on the machine: the numbers are only as quiet as it was
        result = run_load(url, body, args.clients, args.seconds)
        lost += len(result.failures)
        rows.append(row(label, result, load))
        print(rows[-1], *sorted(set(result.failures))[:3], sep="\n", flush=True)

    if args.url:
        measure(args.url.rstrip("/"), "as running")
    else:
        for batch_size in args.batch_sizes:
            extra = ["--checkpoint", args.checkpoint] if args.checkpoint else []
            with running_server(["--accelerator", args.accelerator, "--max-batch-size", str(batch_size),
                                 "--batch-timeout", str(args.batch_timeout), "--timeout", str(args.timeout),
                                 *extra]) as url:
                measure(url, str(batch_size))
    command = "python benchmarks/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        f"`POST /purify` of a {args.size}x{args.size} PNG (chelsea), {args.clients} concurrent clients on 127.0.0.1, "
        f"{args.seconds:g} s per row, batch timeout {args.batch_timeout:g} s, accelerator {args.accelerator}, "
        f"purifier {args.checkpoint or 'shipped (nrp_cpu.pth)'}; {machine()}.", "", *header, *rows, "",
        f"Every request sent was answered (200, a PNG of the input's size): {'yes' if lost == 0 else f'no, {lost} lost'}.",
        f"Command: `{command.strip()}`"])
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
