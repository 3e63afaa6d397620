"""What ``nrp-purify`` and ``nrp-attack`` share: the folder arguments, the device and memory
options, the fast paths (channels_last, bf16 where native), the bar of tiles for large images and the closing report."""
from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from nrp_lightning import fast_paths
from nrp_lightning.folder_jobs import Summary, UsageError
from nrp_lightning.tiling import parse_memory, report_tiles

# What the output PNGs are, for the commands' --help (folder_jobs and images.load_image_with_mode).
OUTPUT_FORMS = ("Outputs keep their input's form. Alpha: copied through bit for bit into an RGBA (or gray+alpha) "
                "PNG; only the colour channels, as stored (not composited), are processed. Grayscale (L, LA, "
                "I;16, 32-bit): processed as RGB and written back as grayscale, the luma of the result. 16-bit "
                "PNGs give 16-bit PNGs, all else 8-bit. Palette images become RGB (RGBA if the palette has "
                "transparency), CMYK becomes RGB (PIL's conversion, no colour profile), and an animated image "
                "gives its first frame.")


def paragraphs(*texts: str) -> str:
    """``texts`` filled to 79 columns, a blank line apart: a description for ``RawDescriptionHelpFormatter``
    (which keeps the line breaks of an epilog's examples, and so of the description too)."""
    return "\n\n".join(textwrap.fill(text, 79) for text in texts)


def device_from(name: str) -> torch.device:
    """``--device``: ``auto`` is CUDA where there is one, else the CPU; a CUDA device that is not
    there is a ``UsageError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for, but no CUDA device is available; use --device cpu")
    return device


def memory_from(text: str | None) -> int | None:
    """``--max-memory`` in bytes, or None (the device's default budget)."""
    return None if text is None else parse_memory(text)


def fast_path(device: torch.device, net: torch.nn.Module, args: argparse.Namespace) -> tuple[bool, Callable]:
    """``net`` (frozen) in channels_last with its BatchNorms folded (always: the same result to float32
    rounding, faster; ``fast_paths.prepare_frozen``) and whether bf16 autocast is on (``--bf16`` /
    ``--fp32``, or where the device computes bf16 natively and it pays for ``net``:
    ``fast_paths.use_bf16``), with a factory of the autocast contexts for its calls."""
    fast_paths.prepare_frozen(net, device)
    bf16 = fast_paths.use_bf16(device, "bf16" if args.bf16 else "fp32" if args.fp32 else "auto", net=net)
    return bf16, fast_paths.autocast(device, bf16)


def add_folder_arguments(parser: argparse.ArgumentParser, *, seed: bool = True, max_memory: bool = True,
                         bf16: bool = False) -> None:
    parser.add_argument("input", help="an image file or a folder of images (searched recursively)")
    parser.add_argument("output", help="output folder (mirrors INPUT's structure; PNG files), or a .png "
                                       "file for a single input; must not be inside INPUT")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=1, help="images of equal size per batch (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: skip "
                                                                 "them, which resumes an interrupted run)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of the random noise (default 0)")
    if max_memory:
        parser.add_argument("--max-memory", metavar="SIZE", help="memory budget for one batch, e.g. 4G or 512M; "
                            "larger images are processed in overlapping tiles, with a bar of tiles under the "
                            "images' bar (default: half the free memory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    if bf16:
        precision = parser.add_mutually_exclusive_group()
        precision.add_argument("--bf16", action="store_true", help="bf16 autocast (outputs differ from fp32 by "
                               "bf16 rounding). Default: bf16 where the device computes it natively (CUDA with bf16, "
                               "CPUs with AMX or AVX-512 BF16; on AVX-512 BF16 without AMX not for networks with "
                               "depthwise convolutions, e.g. MobileNet, which run faster in fp32 there), fp32 "
                               "elsewhere, where bf16 is emulated and slower; networks run channels_last either way")
        precision.add_argument("--fp32", action="store_true", help="float32 even where bf16 is native")


@contextlib.contextmanager
def tile_bar(sources: Sequence[Path], enabled: bool = True) -> Iterator[None]:
    """While the block runs, a bar of the tiles of the batch of ``sources`` on stderr ("photo.jpg:
    tiles 3/24"), one line under the images' bar; it appears when tiling starts, only for images cut
    into more than one tile (``tiling.report_tiles``), and is cleared when the block ends."""
    if not enabled:
        yield
        return
    label = sources[0].name + (f" +{len(sources) - 1}" if len(sources) > 1 else "")
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=label, position=1, leave=False, file=sys.stderr, mininterval=0, miniters=1,
                       bar_format="{desc}: tiles {n_fmt}/{total_fmt} |{bar}| {elapsed}<{remaining}")  # every tile shown
        bar.update(done - bar.n)

    try:
        with report_tiles(progress):
            yield
    finally:
        if bar is not None:
            bar.close()


def finish(summary: Summary) -> int:
    """Print the run's report; the exit code: 0 if nothing failed, else 1."""
    print(summary.report(), file=sys.stderr)
    return 0 if summary.ok else 1
