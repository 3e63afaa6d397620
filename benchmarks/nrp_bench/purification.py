"""Purification speed: images per second of the RRDB purifier at 224 px, and one large photo through
``nrp_lightning.tiling``. Times in seconds, memory in MiB."""
from __future__ import annotations

import time

import torch

from nrp_bench.flops import count_flops, mfu
from nrp_bench.probes import MemoryProbe, sync, time_fn
from nrp_lightning.models.purifier import RRDBPurifier, purify


def purifier_of(nf_nb_gc: tuple[int, int, int], device: torch.device, channels_last: bool) -> RRDBPurifier:
    torch.manual_seed(0)
    net = RRDBPurifier(*nf_nb_gc).to(device).eval()
    return net.to(memory_format=torch.channels_last) if channels_last else net


def purify_flops(model: tuple[int, int, int], batch: int, size: int) -> int:
    """FLOPs of one purifier forward, counted on the meta device (shapes only, no compute)."""
    with torch.device("meta"):
        net = RRDBPurifier(*model)
        x = torch.empty(batch, 3, size, size)
    with torch.inference_mode():
        return count_flops(lambda: net(x))


def purify_throughput(model: tuple[int, int, int], batch: int, size: int, device: torch.device, reps: int,
                      bf16: bool, channels_last: bool, peak_tflops) -> dict:
    """Images per second of ``purify`` (inference mode) on ``batch`` random ``size`` px images."""
    net = purifier_of(model, device, channels_last)
    x = torch.rand(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return purify(net, x)

    r = time_fn(run, device, warmup=1, reps=reps, flops=False)
    r["flops"] = purify_flops(model, batch, size)
    r.update(img_per_s=batch / r["median_s"], batch=batch, size=size, model=dict(zip(("nf", "nb", "gc"), model)),
             bf16=bf16, channels_last=channels_last, flops_per_img=r["flops"] // batch,
             mfu=mfu(r["flops"], r["median_s"], peak_tflops))
    return r


def purify_photo(model: tuple[int, int, int], hw: tuple[int, int], tile: int, device: torch.device, bf16: bool) -> dict:
    """Time (s) and peak memory (MiB) to purify one ``hw`` photo with ``nrp_lightning.tiling`` (overlapping
    tiles with exact halos, blended), its memory budget set to what a ``tile`` px tile needs, after one
    warm-up tile. A single run: at full size it is minutes on a CPU."""
    from nrp_lightning.tiling import bytes_per_pixel, purify_tiled

    net = purifier_of(model, device, channels_last=device.type == "cuda")
    max_memory = tile * tile * bytes_per_pixel(net, next(net.parameters()).dtype)
    image = torch.rand(1, 3, *hw, device=device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        purify(net, image[..., :tile, :tile])
        sync(device)
        with MemoryProbe(device) as mem:
            start = time.perf_counter()
            purify_tiled(net, image, max_memory=max_memory)
            sync(device)
            seconds = time.perf_counter() - start
    return {"seconds": seconds, "height": hw[0], "width": hw[1], "tile": tile, "bf16": bf16,
            "model": dict(zip(("nf", "nb", "gc"), model)), "megapixels_per_s": hw[0] * hw[1] / 1e6 / seconds,
            "tiling": f"nrp_lightning.tiling.purify_tiled, max_memory={max_memory / 2**20:.0f} MiB", **mem.result}
