"""``nrp-eval`` (and ``python eval.py``): compose ``conf/evaluation/eval.yaml``, build the grid, run
it, write the reports.

``nrp-eval experiment=offline`` runs the offline CPU grid on the shipped models, the shipped purifier
among the defences; ``nrp-eval --help`` lists every preset with what it needs and costs. The config tree
``conf/evaluation/`` mirrors this package: its groups ``data``, ``sources``, ``victims``,
``attacks``, ``defenses``, ``adaptive`` and ``experiment`` are chosen as ``group=option``
(``defenses=with_nrp``), apart from the training presets in ``conf/``.

Outputs in the run folder: ``results.jsonl`` (every scored cell, resumable), ``results.csv``,
``report.md`` (tables laid out like Table 1, Table 5 and Table 3, the adaptive-attack table, the
clean-image cost of each defence and each defended victim's confident subset, every rate with its
95% Wilson interval), ``accuracy_vs_eps.png``, ``samples.png`` (clean / adversarial / defended,
labelled), and W&B tables and images when a logger is on.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from nrp_lightning import fast_paths
from nrp_lightning.config import conf_dir, register_resolvers
from nrp_lightning.defenses.base import Defense
from nrp_lightning.evaluation.grid import Grid, run_grid
from nrp_lightning.evaluation.plots import log_to_wandb
from nrp_lightning.evaluation.tables import write_reports

log = logging.getLogger(__name__)

GROUPS = ("sources", "victims", "attacks", "defenses", "adaptive")  # groups of named entries, table label -> object

def presets() -> dict[str, str]:
    """Each ``experiment=`` preset of the evaluation tree and its ``# help:`` line (what it runs, what it
    needs, what it costs)."""
    out = {}
    for path in sorted((Path(conf_dir("eval")) / "experiment").glob("*.yaml")):
        lines = [line[len("# help:"):].strip() for line in path.read_text().splitlines() if line.startswith("# help:")]
        out[path.stem] = lines[0] if lines else ""
    return out


def usage() -> str:
    names = presets()
    width = max(map(len, names))
    return ("Usage: nrp-eval experiment=PRESET [key=value ...]  (Hydra; `nrp-eval experiment=PRESET --cfg job` prints the "
            "composed config)\n"
            "       nrp-eval tasks tasks={table4,table2_detection,table2_segmentation} [key=value ...]  (detection / "
            "segmentation, Tables 2 and 4; `nrp-eval tasks --help`)\n\nPresets (times: the 2-core CPU we develop on, "
            "idle; a second run reads the cached adversarial sets):\n"
            + "\n".join(f"  {name:<{width}}  {text}" for name, text in names.items()))


def defenses_from_config(node: DictConfig | None) -> dict[str, Defense]:
    """The defences of ``cfg.defenses`` by table label: a defence's ``label`` where its key cannot be
    one (``RP`` shows as ``R&P``: ``~defenses.R&P`` would be a Hydra lexer error), else its key.
    Entries set to null (``defenses.JPEG=null``) are left out."""
    from hydra.utils import instantiate

    defenses = {}
    for key, spec in (node or {}).items():
        if spec is not None:
            spec = OmegaConf.to_container(spec, resolve=True, throw_on_missing=True)
            label = spec.pop("label", key)
            defenses[label] = instantiate(spec, _convert_="all")
    return defenses


def candidates_from_config(node: DictConfig | None, defenses: DictConfig | None) -> dict[str, Defense]:
    """``cfg.candidates`` (label -> purifier file): each a plain NRP defence beside the preset's
    own, e.g. ``+candidates.NRP_B=outputs/RUN/purifier.pth``; a label may not repeat a defence's."""
    from nrp_lightning.defenses import load_nrp

    clash = sorted(set(node or {}) & set(defenses or {}))
    if clash:
        raise ValueError(f"candidates {clash} have the labels of the preset's defences; name them apart")
    return {label: load_nrp(str(path)) for label, path in (node or {}).items() if path is not None}


def check_entries(cfg: DictConfig) -> None:
    """Fail before any work where an entry of a group has no ``_target_``: a preset tuned it (the
    offline preset sets ``adaptive.BPDA.eot_samples``) while the chosen option left it out
    (``adaptive=none``), so only the tuned keys remain."""
    for group in GROUPS:
        for key, spec in (cfg[group] or {}).items():
            if spec is not None and "_target_" not in spec:
                raise ValueError(f"{group}.{key} has no _target_, only {OmegaConf.to_container(spec)}: a preset tunes "
                                 f"it but the chosen {group} option does not define it; drop it with ~{group}.{key}")


def grid_from_config(cfg: DictConfig, bf16: bool = False) -> Grid:
    """Instantiate ``Grid`` from the composed ``conf/evaluation/eval.yaml``."""
    from hydra.utils import instantiate

    check_entries(cfg)
    built = {k: instantiate(cfg[k], _convert_="all") for k in ("data", "sources", "attacks", "victims", "adaptive")}
    named = {k: {name: obj for name, obj in (built[k] or {}).items() if obj is not None}  # null drops an entry
             for k in ("sources", "attacks", "victims", "adaptive")}
    return Grid(data=built["data"], sources=named["sources"], attacks=named["attacks"],
                defenses={**defenses_from_config(cfg.defenses), **candidates_from_config(cfg.get("candidates"), cfg.defenses)},
                victims=named["victims"], defended_victims=list(cfg.defended_victims) if cfg.defended_victims else None,
                adaptive=named["adaptive"], eps_sweep=list(cfg.eps_sweep or []),
                sweep_attack=cfg.sweep_attack, sweep_source=cfg.sweep_source, batch_size=cfg.batch_size, seed=cfg.seed,
                confident_threshold=cfg.confident_threshold, targets=cfg.targets, bf16=bf16,
                paired_with=list(cfg.get("paired_with") or []), paper_table1=bool(cfg.get("paper_table1", False)))


def evaluate(cfg: DictConfig, out_dir: str | os.PathLike) -> Path:
    """Build the grid of ``cfg``, run it, write the reports; returns the report path."""
    start = time.time()
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = fast_paths.use_bf16(device, cfg.precision)
    log.info("evaluating on %s", fast_paths.describe(device, bf16))
    grid = grid_from_config(cfg, bf16)
    out_dir, cache_dir = Path(out_dir), Path(cfg.cache_dir)
    rows = run_grid(grid, out_dir, cache_dir, device, progress=cfg.progress)
    report = write_reports(rows, grid, out_dir, cache_dir, time.time() - start)
    if cfg.logger:
        log_to_wandb(rows, out_dir, **cfg.logger)
    log.info("wrote %s", report)
    return report


def old_spelling(argv: list[str]) -> str | None:
    """A one-line hint for an override in the spelling of the old shared tree
    (``evaluation/defenses@defenses=with_nrp``), which Hydra would reject less clearly; else None."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~").startswith("evaluation/"):
            group = key.lstrip("+~").removeprefix("evaluation/").partition("@")[0]
            return f"nrp-eval: `{arg}` is the old spelling; the evaluation groups are top-level now: `{group}={value}`"
    return None


def main() -> None:
    """Console entry ``nrp-eval`` (and ``eval.py``): ``nrp-eval experiment=offline [overrides]``."""
    import hydra
    from hydra.core.hydra_config import HydraConfig

    if sys.argv[1:2] == ["tasks"]:  # nrp-eval tasks tasks=table4: detection / segmentation (Tables 2, 4)
        from nrp_lightning.tasks.cross_task import main as cross_task_main

        sys.argv.pop(1)
        return cross_task_main()
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        print(usage())
        return
    hint = old_spelling(sys.argv[1:])
    if hint:
        sys.exit(hint)
    register_resolvers()
    fast_paths.tune_allocator()

    @hydra.main(config_path=conf_dir("eval"), config_name="eval", version_base="1.3")
    def _run(cfg) -> None:
        print(f"report: {evaluate(cfg, HydraConfig.get().runtime.output_dir)}")

    _run()


if __name__ == "__main__":
    main()
