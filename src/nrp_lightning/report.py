"""Does the purifier do something? Feature distance and PSNR on held-out crops, before and after."""
from __future__ import annotations

import json
from pathlib import Path


from nrp_lightning.callbacks import sample_grid
from nrp_lightning.images import save_png
from nrp_lightning.lit_module import NRPModule


def purification_report(module: NRPModule, datamodule, run_dir: str | Path) -> dict[str, float]:
    """Attacks the validation crops with the module's ``val_attack`` (SSP), purifies them, prints a table and
    saves ``report_grid.png`` (rows clean / adversarial / purified). Returns the mean metrics:
    ``feat_dist_adv``, ``feat_dist_purified`` (MAE in feature space) and ``psnr_adv``,
    ``psnr_purified`` (dB against the clean crop)."""
    module.eval()
    device = next(module.purifier.parameters()).device
    totals: dict[str, float] = {}
    n = 0
    first = None
    for x in datamodule.val_dataloader():
        x = module._prepare(x.to(device))
        x_adv, purified, metrics = module.evaluate_purification(x)
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v) * x.shape[0]
        n += x.shape[0]
        if first is None:
            first = (x, x_adv, purified)
    means = {k: v / n for k, v in totals.items()}
    grid_path = save_png(sample_grid(*first), Path(run_dir) / "report_grid.png")
    attack = module.val_attack
    print(f"\nheld-out crops: {n} ({len(datamodule.val_set.source)} images), attack: {attack}, "
          f"features: {getattr(module.features, 'name', type(module.features).__name__)}")
    print(f"{'':22s}{'feat_dist (MAE)':>16s}{'PSNR (dB)':>12s}")
    print(f"{'adversarial x′':22s}{means['feat_dist_adv']:16.4f}{means['psnr_adv']:12.2f}")
    print(f"{'purified P(x′)':22s}{means['feat_dist_purified']:16.4f}{means['psnr_purified']:12.2f}")
    print(f"sample grid: {grid_path}")
    (Path(run_dir) / "report.json").write_text(json.dumps({**means, "crops": n, "attack": repr(attack)}, indent=2))
    return means
