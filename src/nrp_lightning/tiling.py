"""Any image size in bounded memory: overlapping tiles, blended with a smooth window.

Each tile carries a ``halo`` of context on every side that borders another tile; the window is
zero on the halo and rises with a raised-cosine ``ramp`` after it, so neighbouring tiles blend
without a seam. With ``halo`` at least the network's receptive-field margin (the default) every
pixel with non-zero weight is computed exactly as in the untiled pass, so tiled and untiled
outputs agree up to float rounding. The tile size comes from a memory budget (bytes) and an
estimate of activation bytes per pixel for the architecture (calibrated by measurement, below).
Inside ``with report_tiles(callback):`` every tiled call reports each tile it finishes.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import weakref
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import nn

from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier

DEFAULT_RAMP = 16  # px of raised-cosine blending after the halo
MIN_CORE = 32  # a tile must keep at least this many px of output per side beyond halos and ramp
SAFETY = 1.25  # margin on the per-pixel estimate
# Peak inference memory per pixel, in activation elements, measured with torch 2.14 on CPU (fp32,
# no_grad, peak RSS of one forward): RRDB nf=64 gc=32 ~4.5 kB/px = 1115 elements ~ 6*(nf+4*gc);
# ResNet nf=64 ~1.3 kB/px = 326 elements ~ 6*nf (`benchmarks/purify_bench.py photo` prints the peak RSS
# of a tiled purification, the figure to compare against when re-measuring).
ELEMENTS_PER_PIXEL: dict[type, Callable[[nn.Module], int]] = {
    RRDBPurifier: lambda p: 6 * (p.conv_first.out_channels + 4 * p.RRDB_trunk[0].RDB1.conv1.out_channels),
    ResNetPurifier: lambda p: 6 * p.conv_first.out_channels,
}


# progress(done, total): tiles finished so far, of all the tiles of one purify_tiled/attack_tiled call
TileProgress = Callable[[int, int], None]
_tile_progress: ContextVar[TileProgress | None] = ContextVar("tile_progress", default=None)


@contextlib.contextmanager
def report_tiles(progress: TileProgress) -> Iterator[None]:
    """Within the block, each ``purify_tiled`` or ``attack_tiled`` call that tiles its images calls
    ``progress(0, total)`` as it starts and ``progress(done, total)`` after every tile (``total``: the
    tiles of all the call's images); images processed whole report nothing. A context, not an argument, so that it reaches them
    through their callers (``purify.purify_images``, the command line's batch functions)."""
    token = _tile_progress.set(progress)
    try:
        yield
    finally:
        _tile_progress.reset(token)


def _tile_counter(total: int) -> Callable[[], None] | None:
    """What ``tiled_apply`` calls after each of ``total`` tiles: the ``report_tiles`` callback in force
    with the count so far (told ``0`` at once); None without one, or for a single tile."""
    progress = _tile_progress.get()
    if progress is None or total <= 1:
        return None
    progress(0, total)
    done = itertools.count(1)
    return lambda: progress(next(done), total)


def receptive_margin(net: nn.Module) -> int:
    """Pixels of context one output pixel depends on, per side: the sum of the conv radii.

    Exact for the purifiers (every 3x3 conv lies on the longest path: ``2 + 15*nb`` for RRDB,
    ``2 + 2*nb`` for ResNet); an upper bound for other stride-1 conv nets.
    """
    return sum(m.dilation[0] * (m.kernel_size[0] - 1) // 2 for m in net.modules() if isinstance(m, nn.Conv2d))


def bytes_per_pixel(net: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Estimated peak inference bytes per input pixel of one image (activations, with ``SAFETY``)."""
    dtype = dtype or next(net.parameters()).dtype
    estimate = ELEMENTS_PER_PIXEL.get(type(net))
    if estimate is not None:
        elements = estimate(net)
    else:  # unknown net: six copies of its widest layer
        elements = 6 * max(m.in_channels + m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d))
    return int(elements * torch.finfo(dtype).bits // 8 * SAFETY)


def available_memory(device: torch.device | str) -> int:
    """Free bytes on ``device``: CUDA free memory, or the OS's MemAvailable for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 4 << 30


def default_memory_budget(device: torch.device | str) -> int:
    """Half of the free memory of ``device`` (CUDA: 70 %), in bytes."""
    fraction = 0.7 if torch.device(device).type == "cuda" else 0.5
    return int(available_memory(device) * fraction)


def parse_memory(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1.5GiB"`` or a plain byte count -> bytes (binary units)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (cleaned[:-1], cleaned[-1]) if cleaned[-1:] in units and cleaned[-1:] else (cleaned, "")
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"cannot read memory size {text!r}; write e.g. 4G, 512M or 1.5GiB") from None
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return int(value)


def tile_starts(length: int, tile: int, halo: int, ramp: int) -> list[int]:
    """Evenly spread tile starts covering ``[0, length)``; neighbours overlap by >= ``2*halo + ramp``."""
    if tile >= length:
        return [0]
    stride = tile - 2 * halo - ramp
    if stride < 1:
        raise ValueError(f"tile {tile} px leaves no output beyond 2 halos of {halo} px and a ramp of {ramp} px")
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def window(start: int, tile: int, length: int, halo: int, ramp: int) -> torch.Tensor:
    """1-D blend weights ``(tile,)``: 0 on the halo, raised cosine over ``ramp`` px, then 1.

    Sides on the image border get weight 1 up to the edge (no neighbour to blend with).
    """
    i = torch.arange(tile, dtype=torch.float64)
    inf = torch.full_like(i, float("inf"))
    left = i if start > 0 else inf
    right = (tile - 1 - i) if start + tile < length else inf
    d = torch.minimum(left, right) - halo  # px past the halo
    w = 0.5 - 0.5 * torch.cos(math.pi * (d + 1) / (ramp + 1))
    w = torch.where(d < 0, torch.zeros_like(w), torch.where(d >= ramp, torch.ones_like(w), w))
    return w.float()


def tile_count(height: int, width: int, tile: tuple[int, int], halo: int, ramp: int = DEFAULT_RAMP) -> int:
    """How many tiles ``tiled_apply`` cuts an ``height x width`` image into (1: it runs whole)."""
    return (len(tile_starts(height, min(tile[0], height), halo, ramp))
            * len(tile_starts(width, min(tile[1], width), halo, ramp)))


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: tuple[int, int],
                halo: int, ramp: int = DEFAULT_RAMP, on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """``fn`` over overlapping tiles of ``x`` ``(B, C, H, W)``, blended into ``(B, C', H, W)``.

    ``fn`` maps ``(B, C, h, w)`` to ``(B, C', h, w)``; ``tile`` is ``(tile_h, tile_w)`` in px including
    halos. The output is the window-weighted mean of the tiles, so it stays inside any convex set
    every tile output lies in (e.g. [0, 1], or an l_inf ball around ``x``). ``on_tile()`` is called
    after each tile, if there is more than one.
    """
    _, _, height, width = x.shape
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    if tile_h == height and tile_w == width:
        return fn(x)
    out = weight = None
    for top in tile_starts(height, tile_h, halo, ramp):
        w_row = window(top, tile_h, height, halo, ramp)
        for left in tile_starts(width, tile_w, halo, ramp):
            y = fn(x[..., top:top + tile_h, left:left + tile_w])
            w = (w_row[:, None] * window(left, tile_w, width, halo, ramp)[None, :]).to(y)
            if out is None:
                out = y.new_zeros((*y.shape[:2], height, width))
                weight = y.new_zeros((height, width))
            out[..., top:top + tile_h, left:left + tile_w] += y * w
            weight[top:top + tile_h, left:left + tile_w] += w
            if on_tile is not None:
                on_tile()
    return out / weight


def min_tile_side(halo: int, ramp: int = DEFAULT_RAMP) -> int:
    """The smallest tile side (px) that keeps ``MIN_CORE`` px of output inside two halos and the ramp."""
    return 2 * halo + ramp + MIN_CORE


def tile_shape(height: int, width: int, budget: int, bytes_per_px: int, halo: int, ramp: int) -> tuple[int, int]:
    """The largest tile (``tile_h, tile_w``) within ``budget`` bytes: square unless the image is thin."""
    pixels = budget // bytes_per_px
    side = math.isqrt(pixels)
    tile_h = min(height, side)
    tile_w = min(width, pixels // max(tile_h, 1))
    tile_h = min(height, pixels // max(tile_w, 1))
    needed = min_tile_side(halo, ramp)
    if (tile_h < height and tile_h < needed) or (tile_w < width and tile_w < needed):
        need = needed * needed * bytes_per_px
        raise MemoryError(f"a memory budget of {budget / 2**20:.0f} MiB allows tiles of only {tile_h}x{tile_w} px, "
                          f"but a tile needs at least {needed} px per side (2 halos of {halo} px, a {ramp} px ramp "
                          f"and {MIN_CORE} px of output): raise the budget to at least {need / 2**20:.0f} MiB "
                          "(--max-memory) or lower the halo")
    return tile_h, tile_w


def purify_tiled(purifier: nn.Module, x: torch.Tensor, max_memory: int | None = None,
                 halo: int | None = None, ramp: int = DEFAULT_RAMP) -> torch.Tensor:
    """``purifier(x).clamp(0, 1)`` for ``x`` ``(B, 3, H, W)`` in [0, 1] within ``max_memory`` bytes.

    Whole batch if it fits, else image by image, else each image in tiles (``halo`` default: the
    receptive-field margin, which makes tiling exact up to float rounding), each tile reported to
    ``report_tiles``' callback if one is in force. Call under ``no_grad``.
    """
    param = next(purifier.parameters())
    budget = max_memory if max_memory is not None else default_memory_budget(param.device)
    halo = receptive_margin(purifier) if halo is None else halo
    per_px = bytes_per_pixel(purifier, param.dtype)
    batch, _, height, width = x.shape
    image_bytes = height * width * per_px
    if image_bytes <= budget:
        outputs = [purifier(chunk).clamp_(0.0, 1.0) for chunk in x.split(max(1, budget // image_bytes))]
    else:
        tile = tile_shape(height, width, budget, per_px, halo, ramp)
        on_tile = _tile_counter(batch * tile_count(height, width, tile, halo, ramp))
        outputs = [tiled_apply(lambda t: purifier(t).clamp_(0.0, 1.0), image, tile, halo, ramp, on_tile)
                   for image in x.split(1)]
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


ATTACK_HALO = 32  # px of context per tile side for attacks (an approximation, see attack_tiled)
_PROBE_SIDE = 64
_measured: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def measure_backward_bytes_per_pixel(net: nn.Module, device: torch.device | str | None = None) -> int:
    """Bytes per input pixel a forward+backward through ``net`` needs, measured once on a
    ``64x64`` probe: the tensors autograd saves (counted once each), doubled for the gradients,
    times ``SAFETY``. Cached per module."""
    if net in _measured:
        return _measured[net]
    param = next(net.parameters(), None)
    device = device or (param.device if param is not None else "cpu")
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    probe = torch.rand(1, 3, _PROBE_SIDE, _PROBE_SIDE, device=device, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(probe)
    del out
    _measured[net] = int(2 * sum(seen.values()) / _PROBE_SIDE**2 * SAFETY) + 1
    return _measured[net]


def attack_tiled(attack: Callable[[torch.Tensor], torch.Tensor], features: nn.Module, x: torch.Tensor,
                 max_memory: int | None = None, halo: int = ATTACK_HALO, ramp: int = DEFAULT_RAMP) -> torch.Tensor:
    """``attack(x)`` for ``x`` ``(B, 3, H, W)`` in [0, 1] within ``max_memory`` bytes of backward passes
    through ``features``: whole batch, image by image, or overlapping tiles.

    Tiling an attack is an approximation (each tile sees ``halo`` px of context, not the whole image),
    but the result stays inside the attack's l_inf ball and [0, 1]: blending is a convex combination.
    Tiles are reported as in ``purify_tiled``.
    """
    budget = max_memory if max_memory is not None else default_memory_budget(x.device)
    per_px = measure_backward_bytes_per_pixel(features, x.device)
    _, _, height, width = x.shape
    image_bytes = height * width * per_px
    if image_bytes <= budget:
        return torch.cat([attack(chunk) for chunk in x.split(max(1, budget // image_bytes))])
    tile = tile_shape(height, width, budget, per_px, halo, ramp)
    on_tile = _tile_counter(len(x) * tile_count(height, width, tile, halo, ramp))
    return torch.cat([tiled_apply(attack, image, tile, halo, ramp, on_tile) for image in x.split(1)])
