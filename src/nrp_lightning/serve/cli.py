"""Console commands ``nrp-serve`` (a purification server on LitServe) and ``nrp-demo-page`` (the same
server with the demo page at ``/demo`` and the ``/attack`` route it uses).

Routes: ``POST /purify``, ``POST /predict``, ``GET /health`` (200 ``ok`` once every worker is up),
``GET /info``, ``GET /docs`` (OpenAPI); with the page also ``GET /demo``, ``GET /demo/options``,
``GET /demo/examples/NAME.png`` and ``POST /attack``. Exit code 2 for usage errors (an unreadable
checkpoint, a classifier whose weights cannot be had, CUDA asked for and absent). SIGTERM or SIGINT
to the main process stops it with all its workers and frees the port (``shutdown``).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from nrp_lightning.serve.protocol import DEFAULT_MAX_PIXELS
from nrp_lightning.serve.shutdown import end_children, stop_on_signals
from nrp_lightning.tiling import parse_memory

PAGE = Path(__file__).parent / "page" / "index.html"
DEFAULT_PORT = 8000


def serve_parser(prog: str = "nrp-serve", page: bool = False) -> argparse.ArgumentParser:
    what = ("the demo page (GET /demo: attack a photo, purify it, see what a classifier makes of each) and the "
            "routes of nrp-serve" if page else
            "a Neural Representation Purifier over HTTP: POST /purify (an image -> the purified PNG, same size) and "
            "POST /predict (an image -> a classifier's top-5 on it and on its purification)")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"Serve {what}, on LitServe with dynamic batching. A request body is an image file (PNG, JPEG, "
                    "...; options in the query string) or JSON {\"image\": base64, options...}. Bad requests get a "
                    "4xx JSON error {\"detail\": ...}; GET /health answers ok once the workers are up.",
        epilog=f"examples: {prog} --accelerator cpu --port 8000\n"
               "          curl --data-binary @photo.jpg 'http://127.0.0.1:8000/purify?dynamic=true&seed=0' -o purified.png\n"
               "          curl --data-binary @photo.jpg http://127.0.0.1:8000/predict",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="NRP.pth, NRP_resG.pth, an exported state dict or an nrp-train .ckpt "
                                             "(default: the purifier shipped in the package)")
    parser.add_argument("--classifier", default="mobilenet_v2",
                        help="the classifier of /predict (and the victim on the page), by the names nrp-attack "
                             "--source takes: mobilenet_v2, efficientnet_lite0..2 (weights ship offline), the paper's "
                             "models, tv:ARCH or timm:NAME (download: need internet or a filled cache). Default "
                             "mobilenet_v2")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the workers run (default: cuda if available)")
    parser.add_argument("--workers-per-device", type=int, default=1, metavar="N",
                        help="inference worker processes per device for /purify and for /predict (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=1, metavar="N",
                        help="dynamic batching: serve up to N requests that arrive together as one batch (default 1: "
                             "on 2 CPU cores batching lowered throughput, benchmarks/serve_load.md; try 8 on a GPU)")
    parser.add_argument("--batch-timeout", type=float, default=0.01, metavar="S",
                        help="dynamic batching: wait up to S seconds for a batch to fill (default 0.01)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images of more than N pixels with 413 (default {DEFAULT_MAX_PIXELS}, a 6000x4000 "
                             "photo); the body size limit follows from it")
    parser.add_argument("--max-memory", metavar="SIZE", help="memory budget for one batch, e.g. 4G or 512M; larger "
                        "images are purified in overlapping tiles, as nrp-purify does (default: half the free memory)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="a request waiting longer than S seconds for a worker gets 504 (default 60)")
    parser.add_argument("--host", default="127.0.0.1", choices=("127.0.0.1", "0.0.0.0", "::"),
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="server log level (default warning; info logs every request)")
    if not page:
        parser.add_argument("--page", action="store_true", help="also serve the demo page (as nrp-demo-page)")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int | None:
    """Fail fast, in this process, on what the workers would fail on later; the memory budget in bytes."""
    from nrp_lightning.cli_purify import build_source
    from nrp_lightning.purify import PurifierLoadError, load_purifier
    from nrp_lightning.weights import WeightsNotFoundError

    if args.accelerator == "cuda" and not torch.cuda.is_available():
        parser.error("--accelerator cuda asked for, but no CUDA device is available; use --accelerator cpu")
    for name in ("workers_per_device", "max_batch_size", "max_pixels"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_timeout < 0 or args.timeout <= 0:
        parser.error("--batch-timeout must be >= 0 and --timeout > 0")
    try:
        max_memory = None if args.max_memory is None else parse_memory(args.max_memory)
        load_purifier(args.checkpoint)
        build_source(args.classifier)
    except WeightsNotFoundError as exc:
        parser.error(f"--classifier {args.classifier}: {exc}\n(offline, mobilenet_v2 and efficientnet_lite0..2 work "
                     "with their weight packages)")
    except (PurifierLoadError, ValueError, RuntimeError) as exc:
        parser.error(str(exc))
    return max_memory


def build_server(args: argparse.Namespace, max_memory: int | None, page: bool):
    """The ``LitServer`` for parsed arguments: the APIs, the raw-body middleware, readable 422s, the page."""
    import litserve as ls
    from fastapi.exceptions import RequestValidationError

    from nrp_lightning.serve.apis import AttackAPI, PredictAPI, PurifyAPI
    from nrp_lightning.serve.protocol import RawImageBodies, explain_validation_error, max_body_bytes

    cores = os.cpu_count() or 1
    threads = max(1, cores // args.workers_per_device) if args.accelerator != "cuda" else None
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    apis = [PurifyAPI(args.checkpoint, args.max_pixels, max_memory=max_memory, threads=threads, **batching),
            PredictAPI(args.checkpoint, args.classifier, args.max_pixels, max_memory=max_memory, threads=threads,
                       **batching)]
    if page:
        apis.append(AttackAPI(args.classifier, args.max_pixels, threads=threads))
    schemas = {api.api_path: api.schema for api in apis}
    workers = {api.api_path: 1 if isinstance(api, AttackAPI) else args.workers_per_device for api in apis}
    server = ls.LitServer(apis, accelerator=args.accelerator, workers_per_device=workers, timeout=args.timeout,
                          middlewares=[(RawImageBodies, {"paths": tuple(schemas),
                                                         "max_bytes": max_body_bytes(args.max_pixels)})])
    server.app.add_exception_handler(RequestValidationError, explain_validation_error(schemas))
    if page:
        add_page_routes(server.app, args.classifier, args.checkpoint)
    return server


@functools.lru_cache(maxsize=None)
def example_png(name: str) -> bytes:
    """An embedded photo (``data.EMBEDDED_PHOTOS``) as PNG bytes."""
    from nrp_lightning.data import EMBEDDED_PHOTOS
    from nrp_lightning.images import array_to_tensor, png_bytes

    return png_bytes(array_to_tensor(EMBEDDED_PHOTOS[name]()[0]))


def add_page_routes(app, classifier: str, checkpoint: str | None) -> None:
    """``GET /demo`` (the page), ``/demo/options`` (what it offers) and ``/demo/examples/NAME.png``."""
    from fastapi import HTTPException, Response
    from fastapi.responses import HTMLResponse

    from nrp_lightning.data import EMBEDDED_PHOTOS
    from nrp_lightning.models.classifiers import OFFLINE_MODELS
    from nrp_lightning.serve.apis import PAGE_ATTACK, PAGE_EPS, PAGE_EXAMPLE, SSP_SOURCES, SSP_STEPS, page_source

    classifiers = list(OFFLINE_MODELS) + ([classifier] if classifier not in OFFLINE_MODELS else [])  # white-box too
    options = {
        "victim": classifier,
        "purifier": checkpoint or "nrp_cpu.pth, shipped with nrp-lightning",
        "attacks": {"mifgsm": {"name": "MI-FGSM", "sources": classifiers,
                               "about": "10 momentum steps on the source classifier's cross-entropy"},
                    "dim": {"name": "DIM", "sources": classifiers,
                            "about": "MI-FGSM on randomly resized and padded inputs"},
                    "ssp": {"name": "SSP", "sources": list(SSP_SOURCES),
                            "about": f"label-free: {SSP_STEPS} steps distorting the source's features"}},
        "defaults": {"example": PAGE_EXAMPLE, "attack": PAGE_ATTACK, "source": page_source(classifier),
                     "eps": PAGE_EPS},
        "examples": list(EMBEDDED_PHOTOS),
    }

    @app.get("/demo", response_class=HTMLResponse)
    async def demo_page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.get("/demo/options")
    async def demo_options() -> dict:
        return options

    @app.get("/demo/examples/{name}.png")
    def demo_example(name: str) -> Response:
        if name not in EMBEDDED_PHOTOS:
            raise HTTPException(404, f"no example photo {name!r}; there are {', '.join(EMBEDDED_PHOTOS)}")
        return Response(example_png(name), media_type="image/png")


def run(argv: Sequence[str] | None, prog: str, page: bool) -> int:
    parser = serve_parser(prog, page)
    args = parser.parse_args(argv)
    page = page or args.page
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    max_memory = check_args(args, parser)
    server = build_server(args, max_memory, page)
    where = f"http://{'127.0.0.1' if args.host != '::' else '[::1]'}:{args.port}"
    print(f"{prog}: {where}/purify, {where}/predict ({args.classifier}), {where}/health"
          + (f"; the page: {where}/demo" if page else ""), file=sys.stderr, flush=True)
    stop_on_signals(prog)
    try:
        server.run(host=args.host, port=args.port, log_level=args.log_level, generate_client_file=False,
                   num_api_servers=1)
    except KeyboardInterrupt:  # a stop signal while the workers were starting, before LitServe handles it
        pass
    finally:
        end_children()
    return 0


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``nrp-serve --accelerator cpu --port 8000 ...``"""
    return run(argv, "nrp-serve", page=False)


def demo_page_main(argv: Sequence[str] | None = None) -> int:
    """``nrp-demo-page [--port 8000 ...]``: nrp-serve with the demo page."""
    return run(argv, "nrp-demo-page", page=True)


if __name__ == "__main__":
    sys.exit(serve_main())
