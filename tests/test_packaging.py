"""What a regular (non-editable) install carries: the wheel holds the one config tree and the
shipped purifiers, and the commands compose and train from it outside the source tree."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nrp_lightning.config import CONF_DIR, PACKAGE_CONF, compose
from test_train import ROOT, TINY, _env

TRAINING_GROUPS = {"ablation", "attack", "backbone", "callbacks", "critic", "data", "experiment", "logger", "loss",
                   "model", "module", "paths", "trainer"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of what a fresh clone holds (tracked files, links as links), with this
    working tree's edits, so that building leaves no build/ folder in the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src, dst = ROOT / name, tmp / "tree" / name
        if not (src.is_file() or src.is_symlink()):
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(tmp / "tree"), "-w", str(tmp)], check=True, capture_output=True, timeout=300)
    return next(tmp.glob("nrp_lightning-*.whl"))


def test_the_package_config_tree_is_the_checkout_conf_folder():
    """One tree: nrp_lightning/conf is a link to conf/, which users edit and train.py composes from."""
    assert PACKAGE_CONF.is_symlink() and PACKAGE_CONF.resolve() == ROOT / "conf" == CONF_DIR


def test_the_wheel_holds_every_config_and_the_pretrained_purifiers(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"nrp_lightning/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert {"nrp_lightning/conf/train.yaml", "nrp_lightning/conf/experiment/demo.yaml",
            "nrp_lightning/conf/evaluation/eval.yaml", "nrp_lightning/conf/cross_task.yaml"} <= configs
    assert {n for n in names if n.startswith("nrp_lightning/conf/")} == configs
    pretrained = {f"nrp_lightning/pretrained/{p.name}" for p in (PACKAGE_CONF.parent / "pretrained").glob("*.*")}
    assert {f"nrp_lightning/pretrained/{name}.{ext}" for name in ("nrp_cpu", "nrp_cpu_ssp", "nrp_real")
            for ext in ("pth", "json")} <= pretrained <= names


def help_groups(help_text: str) -> dict[str, str]:
    """The ``group: options`` lines of a ``--help`` text."""
    section = help_text.split("== Config groups (choose one with group=option) ==\n")[1].split("\n\n")[0]
    return dict(line.split(": ", 1) for line in section.splitlines())


@pytest.mark.parametrize("config_name, groups, group, options", [
    ("train", TRAINING_GROUPS, "experiment", "demo, nrp_cpu, nrp_full, nrp_real"),
    ("cross_task", {"tasks"}, "tasks", "table2_detection, table2_segmentation, table4"),
])
def test_help_lists_only_the_groups_of_its_own_app(config_name, groups, group, options, tmp_path):
    """Not eval's tree (evaluation/...) nor the other app's groups, though all live under conf/
    (the template Hydra prints for --help, resolved as the command resolves it)."""
    listed = help_groups(compose(config_name=config_name, run_dir=str(tmp_path)).hydra.help.template)
    assert set(listed) == groups
    assert listed[group] == options


@pytest.mark.slow
def test_nrp_train_runs_from_a_regular_install_outside_the_source_tree(wheel, tmp_path):
    """The issue's "done when": pip install the wheel (not editable, torch left alone), then
    compose every app's config and ``nrp-train experiment=demo steps=2`` there."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**_env(tmp_path / "outputs"), "PYTHONPATH": str(site)}
    probe = ("import nrp_lightning, nrp_lightning.config as c\n"
             "print(nrp_lightning.__file__)\n"
             "print(c.compose(['experiment=demo']).experiment_name)\n"
             "print(c.compose(config_name='eval').experiment_name)\n"
             "print(c.compose(['tasks=table4'], config_name='cross_task').task)\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(site / "nrp_lightning" / "__init__.py"), "demo", "offline", "detection"]

    proc = subprocess.run([str(site / "bin" / "nrp-train"), *TINY, "steps=2", "val_every=1000", "checkpoint_every=2",
                           "data.samples_per_epoch=4", "report=false"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "outputs" / "demo-none"
    assert (run / "purifier.pth").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert f"path: {site / 'nrp_lightning' / 'conf'}\n" in (run / ".hydra" / "hydra.yaml").read_text()
    proc = subprocess.run([str(site / "bin" / "nrp-train"), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(help_groups(proc.stdout)) == TRAINING_GROUPS

    shutil.rmtree(site / "nrp_lightning" / "conf")
    proc = subprocess.run([sys.executable, "-c", "from nrp_lightning.config import conf_dir; conf_dir()"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"FileNotFoundError: Hydra config train.yaml not found under {site / 'nrp_lightning' / 'conf'}: this install")
