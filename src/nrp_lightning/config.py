"""Where the Hydra configs live, the resolvers they use, and composing them outside a CLI."""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGE_CONF = Path(__file__).resolve().parent / "conf"  # a folder in a wheel; in a checkout, a link to conf/
CHECKOUT_CONF = Path(__file__).resolve().parents[2] / "conf"  # where git made no link (Windows without symlinks)
CONF_DIR = next((d.resolve() for d in (PACKAGE_CONF, CHECKOUT_CONF) if (d / "train.yaml").is_file()), PACKAGE_CONF)
EVAL_CONF_DIR = CONF_DIR / "evaluation"  # eval.py's own tree: its groups (data, experiment, ...) are not training's


class BadConfigError(ValueError):
    """A config value outside what it may be (a negative loss weight, ``steps=0``, ...); train.py
    prints it as one line and exits with status 2, like a refused run."""


def is_number(value) -> bool:
    """An int or float config value (not a bool, not a string that Hydra passed through)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def optimizer_steps(iterations: int) -> int:
    """Lightning's ``global_step`` for ``iterations`` of Algorithm 2 (two optimizers step each)."""
    return 2 * int(iterations)


def swept_keys(argv: list[str] | None = None) -> set[str]:
    """Keys a ``-m`` command line sweeps (``key=a,b``, ``key=range(...)``, ``key=choice(...)``)."""
    keys = set()
    for arg in (sys.argv[1:] if argv is None else argv):
        key, sep, value = arg.partition("=")
        if sep and ("," in re.sub(r"\[.*?\]|\(.*?\)", "", value) or value.startswith(("range(", "choice(", "glob("))):
            keys.add(key.lstrip("+~"))
    return keys


def job_dirname(num: int, task_overrides: list[str], max_len: int = 100) -> str:
    """A multirun job's folder name: its number and the values of the swept keys, e.g.
    ``1_ablation=gnp`` or ``2_attacks.SSP.features.layer=11`` (else its config-group choices)."""
    overrides = [o.lstrip("+~") for o in task_overrides if not o.lstrip("+~").startswith("hydra")]
    swept = swept_keys()
    chosen = [o for o in overrides if o.split("=", 1)[0] in swept]
    choices = [o for o in overrides if not o.startswith("experiment=")
               and any((root / o.split("=", 1)[0].split("@")[0]).is_dir() for root in (CONF_DIR, EVAL_CONF_DIR))]
    name = ",".join(chosen or choices or overrides).replace("/", "_") or "job"
    if len(name) > max_len:
        name = f"{name[:max_len - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return f"{num}_{name}"


def pretrained(name: str) -> str:
    """``${pretrained:nrp_cpu_ssp.pth}``: the path of a purifier file shipped in the package
    (``src/nrp_lightning/pretrained/``), whatever folder the command runs in."""
    from nrp_lightning.purify import DEFAULT_PURIFIER  # the one place the package's pretrained/ folder is named

    path = DEFAULT_PURIFIER.parent / name
    if not path.is_file():
        shipped = sorted(p.name for p in path.parent.glob("*.pth"))
        raise BadConfigError(f"no purifier {name!r} ships in the package; shipped: {', '.join(shipped)}")
    return str(path)


def config_groups(*, _root_: DictConfig) -> str:
    """``${config_groups:}`` in a ``--help`` template: one ``group: option, ...`` line for each group the
    app's defaults list chooses from. Hydra's ``$APP_CONFIG_GROUPS`` lists every folder under the config
    root instead, so train's help would offer eval's tree (``evaluation/...``) and cross_task's ``tasks``."""
    root = next(Path(s.path) for s in _root_.hydra.runtime.config_sources if s.provider == "main")
    groups = sorted(g for g in _root_.hydra.runtime.choices if g != "hydra" and not g.startswith("hydra/"))
    return "\n".join(f"{g}: {', '.join(sorted(p.stem for p in (root / g).glob('*.yaml')))}" for g in groups)


def register_resolvers() -> None:
    for name, fn in (("optimizer_steps", optimizer_steps), ("job_dirname", job_dirname), ("pretrained", pretrained),
                     ("config_groups", config_groups)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def conf_dir(config_name: str = "train") -> str:
    """The folder of ``<config_name>.yaml``: ``conf/`` (train, cross_task) or ``conf/evaluation/`` (eval),
    the same tree in a checkout and in an installed wheel (``nrp_lightning/conf``)."""
    for root in (CONF_DIR, EVAL_CONF_DIR):
        if (root / f"{config_name}.yaml").is_file():
            return str(root)
    raise FileNotFoundError(f"Hydra config {config_name}.yaml not found under {CONF_DIR}: this install of nrp-lightning "
                            "lacks its configs; reinstall it with `pip install .` from a git checkout, where "
                            "src/nrp_lightning/conf links to conf/")


def compose(overrides: list[str] | None = None, config_name: str = "train", run_dir: str | None = None) -> DictConfig:
    """The resolved config of ``python train.py OVERRIDES`` (``config_name="eval"``: of ``eval.py``)
    without running it (tests, notebooks).

    ``run_dir`` stands in for Hydra's output folder.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    with initialize_config_dir(config_dir=conf_dir(config_name), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []), return_hydra_config=True)
    if run_dir is not None:
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)  # so that ${hydra:runtime.output_dir} resolves
    return cfg
