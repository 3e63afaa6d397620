"""What of a transfer attack survives purification, and how low any input transformation can take
its success on the held-out views (the CPU recipe's transfer targets): a diagnosis, not a defence.

    python lab/probe_residual.py [PURIFIER.pth]   # default: the shipped purifier; ~6 min on 2 cores

On the screen's 35 held-out crops and its cached MI-FGSM / DIM / SSP sets (eps 16, crafted on
MobileNetV2; ``probe_purifier.adversarial_sets``), with EfficientNet-Lite0 as the black box, four
tables:

* **bands**: RMS (8-bit levels) of the perturbation ``x_a - x`` and of what purification leaves of
  it, ``P(x_a) - P(x)``, in three bands (``band_split``: low below an 8x8 box average, mid between
  that and a 2x2 one, high above), and the black box's attack success when only one band of the
  perturbation is added to ``x``. Where a band survives purification and fools the black box on
  its own, the purifier has that band left to remove.
* **where it succeeds**: attack success behind the purifier split by whether P already changes the
  clean view's prediction (there any change of the attacked one counts as a success: the clean
  change is a floor under the attack's success), and success counted against ``P(x)``'s prediction
  instead of ``x``'s (what is left of the attack itself).
* **smoothness**: the lag-1 autocorrelation of each perturbation (its correlation with itself one
  pixel over; about 0 for pixel-to-pixel noise, towards 1 for smooth blobs), for the screen's
  attacks and for the recipe's training SSP (5 steps of 4/255 at eps 16 on MobileNetV2 stride 8,
  ``attack=ssp_fast``).
* **floor**: clean top-1 changed and attack success behind transformations that destroy more and
  more of the image (Gaussian blur, down- and up-sampling). Success is counted against the
  undefended clean prediction, so it can never fall much below the clean changes: the curve says
  how far a defence must keep clean predictions to reach a given success.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_purifier import BLACK_BOX, _batched, adversarial_sets, predict  # noqa: E402

from nrp_lightning.eval_data import photo_views_or_exit  # noqa: E402
from nrp_lightning.attacks.ssp import SSP  # noqa: E402
from nrp_lightning.evaluation.tables import md_table  # noqa: E402
from nrp_lightning.models.features import mobilenet_v2  # noqa: E402
from nrp_lightning.models.classifiers import load_classifier  # noqa: E402
from nrp_lightning.models.purifier import purify  # noqa: E402
from nrp_lightning.purify import load_purifier  # noqa: E402

ATTACKS = ("MI-FGSM", "DIM", "SSP")
BANDS = ("low", "mid", "high")


def band_split(d: torch.Tensor) -> dict[str, torch.Tensor]:
    """``d`` ``(B,3,H,W)`` as the sum of three bands: ``low`` (8x8 box average, bilinear back up),
    ``mid`` (2x2 box average minus ``low``) and ``high`` (the rest). H and W divisible by 8."""
    def smooth(k: int) -> torch.Tensor:
        return F.interpolate(F.avg_pool2d(d, k), scale_factor=k, mode="bilinear", align_corners=False)

    low, fine = smooth(8), smooth(2)
    return {"low": low, "mid": fine - low, "high": d - fine}


def rms(d: torch.Tensor) -> float:
    """Root mean square of ``d`` in 8-bit levels."""
    return float(d.pow(2).mean().sqrt() * 255)


def lag1_autocorrelation(d: torch.Tensor) -> float:
    """Correlation of a perturbation ``(B,3,H,W)`` with itself shifted one pixel to the right."""
    return float((d[..., 1:] * d[..., :-1]).mean() / d.pow(2).mean())


def rate(hit: torch.Tensor) -> str:
    return f"{100 * float(hit.float().mean()):.1f}"


def transformations() -> dict[str, callable]:
    """Ever more destructive input transformations ``(B,3,H,W) -> (B,3,H,W)`` for the floor table."""
    from kornia.filters import gaussian_blur2d

    def blur(sigma: float):
        k = 2 * int(3 * sigma) + 1
        return lambda b: gaussian_blur2d(b, (k, k), (sigma, sigma))

    def resample(factor: int):
        return lambda b: F.interpolate(F.interpolate(b, scale_factor=1 / factor, mode="area"), size=b.shape[-2:],
                                       mode="bilinear", align_corners=False)

    return {"blur σ 1": blur(1.0), "blur σ 1.5": blur(1.5), "blur σ 2": blur(2.0), "blur σ 3": blur(3.0),
            "down/up 2x": resample(2), "down/up 3x": resample(3), "down/up 4x": resample(4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("purifier", nargs="?", help="purifier file (default: the shipped one)")
    parser.add_argument("--photos", type=Path, default=Path("data/photos/heldout"))
    parser.add_argument("--cache", type=Path, default=Path("outputs/probe_cache"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    x = photo_views_or_exit(parser, args.photos)
    source, victim = load_classifier("mobilenet_v2").eval(), load_classifier(BLACK_BOX).eval()
    adv = adversarial_sets(x, source, args.cache, ATTACKS)
    purifier = load_purifier(args.purifier).eval()
    clean_top1 = predict(victim, x)[0]
    with torch.no_grad():
        px = _batched(lambda b: purify(purifier, b), x)
        p_adv = {a: _batched(lambda b: purify(purifier, b), xa) for a, xa in adv.items()}
    print(f"{len(x)} held-out views, attacks eps 16 from mobilenet_v2, black box {BLACK_BOX}; "
          f"purifier {args.purifier or 'shipped'}\n")

    rows = []
    for a, xa in adv.items():
        before, after = band_split(xa - x), band_split(p_adv[a] - px)
        alone = {b: predict(victim, (x + d).clamp(0, 1))[0] != clean_top1 for b, d in before.items()}
        rows.append([a, f"{rms(xa - x):.2f} / {rms(p_adv[a] - px):.2f}",
                     *[f"{rms(before[b]):.2f} / {rms(after[b]):.2f}" for b in BANDS],
                     rate(predict(victim, xa)[0] != clean_top1), *[rate(alone[b]) for b in BANDS]])
    print("Bands: RMS of the perturbation / of what purification leaves of it (8-bit levels), and the "
          "attack's success (%) with all of it or one band alone, no defence\n")
    print(md_table(["attack", "RMS all", "RMS low", "RMS mid", "RMS high", "success: all", "low alone",
                    "mid alone", "high alone"], rows) + "\n")

    purified_top1 = predict(victim, px)[0]
    clean_changed = purified_top1 != clean_top1
    kept, n_kept = ~clean_changed, int((~clean_changed).sum())
    rows = []
    for a in adv:
        pred = predict(victim, p_adv[a])[0]
        success = pred != clean_top1
        rows.append([a, rate(success), f"{int((success & kept).sum())} / {n_kept}",
                     f"{int((success & clean_changed).sum())} / {len(x) - n_kept}",
                     rate(pred != purified_top1)])
    print(f"Where the attack succeeds behind the purifier (it changes {rate(clean_changed)}% of the clean "
          "predictions)\n")
    print(md_table(["attack", "success (%)", "on views P keeps", "on views P changes",
                    "against P(x)'s prediction (%)"], rows) + "\n")

    rows = [[f"{a} (screen)", f"{lag1_autocorrelation(xa - x):.3f}"] for a, xa in adv.items()]
    features = mobilenet_v2(layer=7)
    torch.manual_seed(0)
    x_train = _batched(lambda b: SSP(eps=16, step_size=4.0, steps=5)(b, features), x)
    rows.append(["training SSP (attack=ssp_fast)", f"{lag1_autocorrelation(x_train - x):.3f}"])
    print("Smoothness: lag-1 autocorrelation of each perturbation\n")
    print(md_table(["perturbation", "lag-1 autocorrelation"], rows) + "\n")

    rows = []
    for name, t in transformations().items():
        with torch.no_grad():
            rows.append([name, rate(predict(victim, t(x))[0] != clean_top1),
                         *[rate(predict(victim, t(xa))[0] != clean_top1) for xa in adv.values()]])
    print("Floor: clean top-1 changed and attack success (%) behind destructive transformations\n")
    print(md_table(["transformation", "clean changed", *[f"{a} success" for a in adv]], rows))


if __name__ == "__main__":
    main()
