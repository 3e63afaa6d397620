"""How far bf16 autocast moves what a user gets, against fp32 on the same inputs (the check that
decides whether bf16 may be a default): the shipped purifier's output (PSNR of the two, max |diff|)
and the victim's top-1 behind it, and one attack's adversarial images and its success, paired.

Runs on any CPU: where bf16 is emulated (no AMX / AVX-512 BF16) it is slow but rounds the same way
(bf16 operands, fp32 accumulation), so the agreement measured holds for native bf16 up to the
order of accumulation.

    python benchmarks/nrp_bench/bf16_agreement.py --images data/neurips2017 --n 16 --out outputs/bench/bf16
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from nrp_bench import dev_check  # noqa: E402


def agreement(x: torch.Tensor, labels: torch.Tensor, attack_steps: int) -> dict:
    """fp32 against bf16 autocast on images ``x (N,3,224,224)`` with ``labels (N,)``: purifier
    output, victim (EfficientNet-Lite0) top-1 behind it, MI-FGSM from MobileNetV2 (``attack_steps``
    steps, eps 16; 0: purification only) and its success on the victim, image for image. The
    evaluation grid's own steps (``craft``, ``classify``) and ``purify_images`` do the work."""
    from nrp_lightning import fast_paths
    from nrp_lightning.attacks.transfer import mifgsm
    from nrp_lightning.eval_data import from_uint8, to_uint8
    from nrp_lightning.evaluation.grid import classify, craft
    from nrp_lightning.evaluation.metrics import mcnemar_exact
    from nrp_lightning.lit_module import psnr
    from nrp_lightning.models.classifiers import load_classifier
    from nrp_lightning.purify import load_purifier, purify_images

    cpu = torch.device("cpu")
    purifier = fast_paths.to_channels_last(load_purifier())
    victim = fast_paths.to_channels_last(load_classifier("efficientnet_lite0").eval())
    source = fast_paths.to_channels_last(load_classifier("mobilenet_v2").eval())
    out, seconds = {}, {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            purified = purify_images(purifier, x).float().clamp(0, 1)
            right_clean = classify(victim, purified, 16, cpu)[0][:, 0] == labels
            if attack_steps:  # stored as uint8, as the evaluation stores them
                adv = from_uint8(craft(mifgsm(eps=16, steps=attack_steps), source, to_uint8(x), labels, 8, cpu, 0))
                purified_adv = purify_images(purifier, adv).float().clamp(0, 1)
                right_adv = classify(victim, purified_adv, 16, cpu)[0][:, 0] == labels
            else:  # nothing attacked: the clean outcome, not a second purifier pass over the same images
                adv, right_adv = x, right_clean
        out[name] = purified, adv, right_clean, right_adv
        seconds[name] = round(time.perf_counter() - start, 1)
    (p32, a32, c32, r32), (p16, a16, c16, r16) = out["fp32"], out["bf16"]
    discordant = lambda a, b: (int((a & ~b).sum()), int((~a & b).sum()))  # noqa: E731
    b, c = discordant(r16, r32)
    clean_b, clean_c = discordant(c16, c32)
    return {"n": len(x), "seconds": seconds,
            "purified_psnr_db": round(psnr(p16, p32).item(), 2),
            "purified_max_abs_diff": (p16 - p32).abs().max().item(),
            "clean_top1_changed": int((c16 != c32).sum()),
            "clean_accuracy": {"fp32": round(100 * c32.float().mean().item(), 1),
                               "bf16": round(100 * c16.float().mean().item(), 1)},
            "clean_only_bf16_right": clean_b, "clean_only_fp32_right": clean_c,
            "clean_mcnemar_p": round(mcnemar_exact(clean_b, clean_c), 3),
            "adv_images_differ_share": round((a16 != a32).float().mean().item(), 4),
            "adv_max_abs_diff_255": round(255 * (a16 - a32).abs().max().item(), 1),
            "accuracy_under_attack": {"fp32": round(100 * r32.float().mean().item(), 1),
                                      "bf16": round(100 * r16.float().mean().item(), 1)},
            "under_attack_only_bf16_right": b, "under_attack_only_fp32_right": c,
            "mcnemar_p": round(mcnemar_exact(b, c), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = dev_check.parser(__doc__, "bf16_agreement")
    parser.add_argument("--attack-steps", type=int, default=10, help="MI-FGSM steps (default 10; 0: purification only, "
                        "where bf16 is emulated and slow)")
    args = parser.parse_args(argv)
    from nrp_lightning.fast_paths import native_bf16

    data = dev_check.dev_images(args)
    return dev_check.report(args, "bf16_agreement", {"images": data.description, "cpu_native_bf16": native_bf16("cpu"),
                                                     **agreement(data.images, data.labels, args.attack_steps)})


if __name__ == "__main__":
    sys.exit(main())
