"""How far folding BatchNorm (``fast_paths.prepare_frozen``, the default of attacks and evaluation)
moves what a user gets, against the unfolded networks on the same images: the source's logits, a
10-step MI-FGSM from MobileNetV2 (its adversarial images and their success on EfficientNet-Lite0,
paired image for image) and the time each took. Both in fp32, channels_last.

    python benchmarks/nrp_bench/fold_agreement.py --images data/neurips2017 --n 309
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from nrp_bench import dev_check  # noqa: E402


def agreement(x: torch.Tensor, labels: torch.Tensor, attack_steps: int = 10) -> dict:
    """Unfolded against folded source and victim on ``x (N,3,224,224)`` with ``labels (N,)``."""
    from nrp_lightning import fast_paths
    from nrp_lightning.attacks.transfer import mifgsm
    from nrp_lightning.eval_data import from_uint8, to_uint8
    from nrp_lightning.evaluation.grid import classify, craft
    from nrp_lightning.evaluation.metrics import mcnemar_exact
    from nrp_lightning.models.classifiers import load_classifier

    cpu = torch.device("cpu")
    out, seconds = {}, {}
    for name, fold in (("unfolded", False), ("folded", True)):
        prepare = (lambda net: fast_paths.prepare_frozen(net, cpu)) if fold else fast_paths.to_channels_last
        source = prepare(load_classifier("mobilenet_v2").eval())
        victim = prepare(load_classifier("efficientnet_lite0").eval())
        start = time.perf_counter()
        with torch.no_grad():
            logits = source(x[:16])
        adv = from_uint8(craft(mifgsm(eps=16, steps=attack_steps), source, to_uint8(x), labels, 16, cpu, 0))
        right = classify(victim, adv, 16, cpu)[0][:, 0] == labels
        seconds[name] = round(time.perf_counter() - start, 1)
        out[name] = logits, adv, right
    (l0, a0, r0), (l1, a1, r1) = out["unfolded"], out["folded"]
    b, c = int((r1 & ~r0).sum()), int((~r1 & r0).sum())
    return {"n": len(x), "seconds": seconds, "source_logits_max_abs_diff": (l1 - l0).abs().max().item(),
            "adv_images_differ_share": round((a1 != a0).float().mean().item(), 6),
            "accuracy_under_attack": {"unfolded": round(100 * r0.float().mean().item(), 1),
                                      "folded": round(100 * r1.float().mean().item(), 1)},
            "only_folded_right": b, "only_unfolded_right": c, "mcnemar_p": round(mcnemar_exact(b, c), 3)}


def main(argv: list[str] | None = None) -> int:
    args = dev_check.parser(__doc__, "fold_agreement").parse_args(argv)
    from nrp_lightning.fast_paths import tune_allocator

    tune_allocator()
    data = dev_check.dev_images(args)
    return dev_check.report(args, "fold_agreement", {"images": data.description,
                                                     **agreement(data.images, data.labels)})


if __name__ == "__main__":
    sys.exit(main())
