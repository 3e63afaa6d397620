"""What is benchmarked: the fast-path variants, the profiles (quick, default, full) and the Hydra
config they compose to. Times in seconds, sizes in pixels."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nrp_lightning.config import compose

FULL_RRDB = (64, 23, 32)  # the paper's purifier: nf, nb, gc
SMALL_RRDB = (32, 2, 16)  # conf/model/rrdb_small.yaml
# Photo tiles of the paper's purifier: its receptive margin is 347 px a side, so a tile needs at least
# 742 px (two halos, the ramp, 32 px of output); 2048 px tiles cover a 4000x3000 photo in 9.
FULL_RRDB_TILE = 2048

# Every benchmark config uses random feature-extractor weights: timing does not depend on them and
# VGG16 ImageNet weights cannot be had offline.
COMMON = ("backbone.pretrained=false",)
# experiment=demo: RRDB nf=32 nb=2 gc=16, VGG critic nf=16, MobileNetV2[:7], SSP T=5, batch 8, 64 px.
SMALL_STEP = ("experiment=demo",) + COMMON
# The paper's step (conf/experiment/nrp_full.yaml) on the embedded photos instead of COCO.
FULL_STEP = ("experiment=nrp_full", "data=embedded") + COMMON  # variants set module.channels_last
TINY_STEP = ("experiment=demo", "init_purifier=null", "model.nf=8", "model.nb=1", "model.gc=4", "critic.nf=4", "critic.fc_dim=8",
             "attack.steps=2", "backbone.layer=4", "data.source.names=[astronaut,chelsea,coffee]",
             "data.val_images=1") + COMMON


@dataclass(frozen=True)
class Variant:
    """One combination of the fast-path switches (each maps to a config key or Trainer flag)."""

    bf16: bool = False  # Trainer precision=bf16-mixed (autocast)
    channels_last: bool = False  # module.channels_last
    compile: bool = False  # module.compile (purifier, critic, features)
    fused_adam: bool = True  # module.fused_adam (fused kernels where torch has them for the device)
    act_ckpt: bool = False  # model.activation_checkpointing (RRDB trunk)

    def overrides(self) -> list[str]:
        return [f"module.channels_last={self.channels_last}", f"module.compile={self.compile}",
                f"module.fused_adam={self.fused_adam}", f"model.activation_checkpointing={self.act_ckpt}"]

    @property
    def precision(self) -> str:
        return "bf16-mixed" if self.bf16 else "32-true"


VARIANTS = {
    "fp32": Variant(),
    "bf16": Variant(bf16=True),
    "channels_last": Variant(channels_last=True),
    "compile": Variant(compile=True),
    "no_fused_adam": Variant(fused_adam=False),
    "act_ckpt": Variant(act_ckpt=True),
    "bf16_channels_last": Variant(bf16=True, channels_last=True),  # "fast" without its compile time
    "fast": Variant(bf16=True, channels_last=True, compile=True),
}


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run. Times in seconds, sizes in pixels."""

    name: str
    step: tuple[str, ...]  # Hydra overrides of the step that is broken into parts
    batch: int
    crop: int
    warmup: int
    reps: int
    variants: tuple[str, ...]  # fast paths timed as whole steps
    scaling: dict[str, tuple[int, ...]]  # axis -> values (batch, crop, ssp_steps)
    purify_model: tuple[int, int, int]  # nf, nb, gc of the purifier timed at 224 px
    purify_batch: int
    purify_reps: int
    photo: tuple[int, int]  # (height, width) of the large photo
    photo_model: tuple[int, int, int]
    tile: int
    full_step: tuple[str, ...] | None = None  # a full-size step at batch 1 (memory and act. ckpt)
    full_step_crop: int = 128
    headline: str | None = None  # the variant broken into parts (None: headline_variant's choice)


def profile_for(device: torch.device, quick: bool, full: bool) -> Profile:
    """``quick``: tiny sizes for the smoke test; ``full``: the paper's step (GPU work); otherwise
    sizes that finish in about 10 minutes on 2 CPU cores (and the same sizes on a GPU)."""
    cuda = device.type == "cuda"
    gpu_variants = ("fp32", "bf16", "channels_last", "compile", "no_fused_adam", "act_ckpt", "fast")
    if quick:
        return Profile("quick", TINY_STEP, batch=2, crop=32, warmup=1, reps=2,
                       variants=("fp32", "act_ckpt"), scaling={"batch": (3,), "crop": (48,), "ssp_steps": (1,)},
                       purify_model=(8, 1, 4), purify_batch=1, purify_reps=2,
                       photo=(192, 256), photo_model=(8, 1, 4), tile=128)
    if full:
        return Profile("full", FULL_STEP, batch=16, crop=128, warmup=3 if cuda else 1, reps=10 if cuda else 2,
                       variants=gpu_variants if cuda else ("fp32", "act_ckpt"),
                       scaling={"batch": (4, 8, 16), "crop": (64, 128), "ssp_steps": (1, 10)},
                       purify_model=FULL_RRDB, purify_batch=32 if cuda else 1, purify_reps=10 if cuda else 3,
                       photo=(3000, 4000), photo_model=FULL_RRDB, tile=FULL_RRDB_TILE)
    return Profile("default", SMALL_STEP, batch=8, crop=64, warmup=2 if not cuda else 5, reps=5 if not cuda else 20,
                   variants=gpu_variants if cuda else ("fp32", "bf16", "channels_last", "compile", "no_fused_adam", "act_ckpt"),
                   scaling={"batch": (2, 4, 16), "crop": (32, 96, 128), "ssp_steps": (1, 10)},
                   purify_model=FULL_RRDB, purify_batch=16 if cuda else 1, purify_reps=10 if cuda else 2,
                   photo=(3000, 4000), photo_model=FULL_RRDB if cuda else SMALL_RRDB,
                   tile=FULL_RRDB_TILE if cuda else 512,
                   full_step=FULL_STEP)


def headline_variant(device: torch.device, name: str | None = None) -> tuple[str, Variant]:
    """``name``, or the setting we train with on this device: all fast paths on CUDA; fp32 eager on
    CPU, where bf16 and compile are measured as variants (see RESULTS.md for why they are not the
    default)."""
    name = name or ("fast" if device.type == "cuda" else "fp32")
    return name, VARIANTS[name]


def step_config(profile_overrides: tuple[str, ...], variant: Variant, batch: int, crop: int,
                extra: tuple[str, ...] = (), run_dir: str = "/tmp/nrp-bench"):
    """The composed Hydra config of the benchmarked step (``python train.py <overrides>``)."""
    overrides = [*profile_overrides, *variant.overrides(), f"data.batch_size={batch}", f"data.crop_size={crop}", *extra]
    return compose(overrides, run_dir=run_dir)
