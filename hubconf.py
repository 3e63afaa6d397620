"""torch.hub entry points: the purifiers that ship with nrp-lightning.

    purifier = torch.hub.load("OWNER/nrp-lightning", "nrp_real")                   # from GitHub
    purifier = torch.hub.load("/path/to/nrp-lightning", "nrp_real", source="local")  # from a checkout

Each returns ``purify.load_purifier``'s module: ``(B, 3, H, W)`` RGB in [0, 1] -> purified, unclamped
(``nrp_lightning.purify.purify_images`` clamps and tiles large images), frozen, in eval mode, with
``spec``, ``path`` and ``card`` (training command, measurements, gate) attached.
"""
import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "numpy", "PIL", "tqdm"]  # what nrp_lightning.purify imports

_SRC = Path(__file__).resolve().parent / "src"
if str(_SRC) not in sys.path:  # a torch.hub download holds the package's source, not an install
    sys.path.insert(0, str(_SRC))


def _shipped(name: str, device: str):
    from nrp_lightning.purify import DEFAULT_PURIFIER, load_purifier

    return load_purifier(DEFAULT_PURIFIER.with_name(f"{name}.pth"), device=device)


def nrp_cpu(pretrained: bool = True, device: str = "cpu"):
    """The default purifier (RRDB nf=32 nb=2 gc=16), trained by the CPU recipe ``experiment=nrp_cpu``
    against the classifier's logits; its held-out table is in its model card (``purifier.card``)."""
    if not pretrained:
        raise ValueError("nrp_cpu is a trained purifier; for an untrained one build "
                         "nrp_lightning.models.purifier.RRDBPurifier(nf=32, nb=2, gc=16)")
    return _shipped("nrp_cpu", device)


def nrp_cpu_ssp(pretrained: bool = True, device: str = "cpu"):
    """The same purifier trained against SSP, the paper's self-supervised attack (its card says how)."""
    if not pretrained:
        raise ValueError("nrp_cpu_ssp is a trained purifier; for an untrained one build "
                         "nrp_lightning.models.purifier.RRDBPurifier(nf=32, nb=2, gc=16)")
    return _shipped("nrp_cpu_ssp", device)


def nrp_real(pretrained: bool = True, device: str = "cpu"):
    """The same purifier trained by ``experiment=nrp_real`` on real photographs (128 COCO train2017
    images, 500 ImageNet sample images and the corpus' training photos), DIM inputs of MobileNetV2:
    7-9 points more clean accuracy than ``nrp_cpu`` behind it on the labelled NeurIPS-2017 test split,
    with the same robustness (its table is in its card, ``purifier.card["neurips_evaluation"]``)."""
    if not pretrained:
        raise ValueError("nrp_real is a trained purifier; for an untrained one build "
                         "nrp_lightning.models.purifier.RRDBPurifier(nf=32, nb=2, gc=16)")
    return _shipped("nrp_real", device)
