"""The real Hydra composition, the real NRPModule and Trainer, and resume after SIGKILL."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nrp_lightning.config import CONF_DIR, BadConfigError, compose
from nrp_lightning.train import RunExistsError, build_module, is_complete_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
# A tiny but complete run: real photos, real SSP, real RRDB purifier and VGG critic.
TINY = ["experiment=demo", "init_purifier=null", "model.nf=8", "model.nb=1", "model.gc=4", "critic.nf=4", "critic.fc_dim=8",
        "data.crop_size=32", "data.batch_size=2", "data.val_crops=2", "data.source.names=[astronaut,chelsea,coffee]",
        "data.val_images=1", "attack.steps=2", "backbone.layer=4"]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment, tmp_path):
    cfg = compose([f"experiment={experiment}"], run_dir=str(tmp_path))
    assert cfg.trainer.max_steps == 2 * cfg.steps
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    assert cfg.experiment_name == experiment


def test_nrp_full_is_the_paper_setup(tmp_path):
    cfg = compose(["experiment=nrp_full"], run_dir=str(tmp_path))
    assert (cfg.model.nf, cfg.model.nb, cfg.model.gc) == (64, 23, 32)
    assert (cfg.data.crop_size, cfg.data.resize, cfg.data.batch_size, cfg.data.source.subset) == (128, 480, 16, 25000)
    assert cfg.backbone._target_.endswith("vgg16") and cfg.backbone.layer == 16
    assert (cfg.loss.alpha, cfg.loss.gamma, cfg.loss.lam, cfg.loss.gan_loss) == (5e-3, 1e-2, 1.0, "ragan")
    assert (cfg.module.lr_purifier, cfg.module.lr_critic) == (1e-4, 1e-4)
    assert cfg.attack.eps == 16 and cfg.trainer.devices == 4


def test_training_step_updates_purifier_and_critic_but_never_the_features(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="nrp_lightning.callbacks")
    cfg = compose(TINY + ["steps=2", "val_every=1", "checkpoint_every=1", "trainer.log_every_n_steps=1"],
                  run_dir=str(tmp_path))
    module = build_module(cfg)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = train(cfg)
    module_after = torch.load(result["purifier"], weights_only=True)
    assert result["global_step"] == 4  # 2 iterations x 2 optimizers
    assert set(module_after) == {k.removeprefix("purifier.") for k in before if k.startswith("purifier.")}
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    changed = lambda prefix: any(not torch.equal(before[k], state[k]) for k in before if k.startswith(prefix))  # noqa: E731
    assert changed("purifier.") and changed("critic.")
    assert not changed("features.")
    assert set(result["report"]) == {"feat_dist_adv", "feat_dist_purified", "psnr_adv", "psnr_purified"}
    metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    for name in ("train/loss_adv", "train/loss_img", "train/loss_feat", "train/loss_critic", "train/psnr_purified",
                 "train/feat_dist_adv", "val/feat_dist_purified", "val/attack_share", "val/val_attack_share"):
        assert name in metrics
    assert list((tmp_path / "samples").glob("step_*.png")) and (tmp_path / "report_grid.png").is_file()
    progress = capsys.readouterr().out.replace("\r", "\n")
    assert re.search(r"iterations: 100%\S* 2/2 ", progress), progress[-500:]  # iterations of Algorithm 2, not batches
    assert "validation: attack and purify 2 crops" in progress
    exports = [r for r in caplog.records if r.getMessage().startswith("exported purifier state dict")]
    assert len(exports) == 2  # after iterations 1 and 2; the end of training does not write the same state again


def test_a_second_fresh_run_in_the_same_folder_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunExistsError, match="resume=true"):
        train(compose(TINY + ["steps=1"], run_dir=str(tmp_path)))


def test_a_refused_command_line_run_says_what_to_do_in_one_line_and_leaves_the_earlier_run_alone(tmp_path):
    earlier = tmp_path / "demo-none"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (earlier / ".hydra").mkdir()
    (earlier / ".hydra" / "config.yaml").write_text("the earlier run's config")
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "steps=1"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"refused: {earlier / 'checkpoints'} already holds checkpoints of an earlier run. Add resume=true to continue "
        "it, or run_name=<new name> to start another run beside it."]
    assert (earlier / ".hydra" / "config.yaml").read_text() == "the earlier run's config"
    assert sorted(p.name for p in earlier.iterdir()) == [".hydra", "checkpoints"]


@pytest.mark.parametrize("override, message", [
    ("loss.lam=abc", "loss weights must be numbers >= 0, got alpha=0.005 gamma=0.01 lam='abc'"),
    ("loss.gamma=-1", "loss weights must be numbers >= 0"),
    ("module.weak_fraction=high", "weak_fraction must be in [0, 1], got high"),
])
def test_bad_config_values_are_named(override, message, tmp_path):
    with pytest.raises(BadConfigError, match=re.escape(message)):
        build_module(compose(TINY + [override], run_dir=str(tmp_path)))


def test_a_bad_config_value_on_the_command_line_is_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "steps=0"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1:] == [
        "bad config: steps must be a whole number >= 1 (iterations of Algorithm 2), got 0"]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("overrides, message", [
    ([], "missing: trainer.devices=4 asks for 4 CUDA device(s) and this machine has 0: add trainer=cpu "
         "trainer.devices=1 to run on the CPU"),
    (["trainer=cpu", "trainer.devices=1"], "missing: image folder data/coco/train2017 does not exist: point "
     "data.source.root at a folder of images (data=coco reads it from $COCO_DIR: COCO_DIR=/path/to/coco/train2017"),
])
def test_nrp_full_without_gpus_or_coco_says_what_is_missing_in_one_line_and_leaves_no_folder(overrides, message, tmp_path):
    if overrides == [] and torch.cuda.device_count() >= 4:
        pytest.skip("this machine has the four GPUs nrp_full asks for")
    env = {k: v for k, v in _env(tmp_path / "outputs").items() if k != "COCO_DIR"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "experiment=nrp_full", *overrides], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").iterdir())


def test_a_source_too_small_for_val_images_holds_out_a_quarter_and_says_so(caplog):
    from nrp_lightning.data import EmbeddedImages, NRPDataModule

    dm = NRPDataModule(EmbeddedImages(["astronaut", "chelsea", "coffee", "rocket"]), crop_size=32, val_images=16)
    assert len(dm.train_set.source) == 3 and len(dm.val_set.source) == 1
    assert "data.val_images=16 would leave no training image of the 4" in caplog.text


def _train_cmd(out_root: Path, run_name: str, *extra: str, samples_per_epoch: int = 6) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *TINY, "steps=12", "checkpoint_every=3", "val_every=1000",
            f"data.samples_per_epoch={samples_per_epoch}", "report=false", f"run_name={run_name}", *extra]


def _wait_for_first_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout_s: float = 240) -> Path:
    """Wait until the run in ``run_dir`` has an intact ``last.ckpt`` (or ends, or time runs out)."""
    deadline, last = time.time() + timeout_s, run_dir / "checkpoints" / "last.ckpt"
    while not (last.is_file() and is_complete_checkpoint(last)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    return last


def _env(out_root: Path) -> dict:
    return {**os.environ, "NRP_OUTPUT_ROOT": str(out_root), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    """Kill -9 after the first checkpoint, resume with resume=true: the final purifier is
    bit-identical to the one of an uninterrupted run (same steps, optimizer states and RNG)."""
    subprocess.run(_train_cmd(tmp_path, "straight"), env=_env(tmp_path), check=True, capture_output=True, timeout=300)

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tmp_path, "killed"), env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_first_checkpoint(proc, run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    intact = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if is_complete_checkpoint(p)]
    killed_at = max(torch.load(p, weights_only=True)["global_step"] for p in intact)
    assert 0 < killed_at < 24

    again = subprocess.run(_train_cmd(tmp_path, "killed"), env=_env(tmp_path), capture_output=True, text=True)
    assert again.returncode != 0 and "resume=true" in again.stderr  # no silent restart over the old run

    subprocess.run(_train_cmd(tmp_path, "killed", "resume=true"), env=_env(tmp_path), check=True,
                   capture_output=True, timeout=300)
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 24
    straight = torch.load(tmp_path / "straight" / "purifier.pth", weights_only=True)
    resumed = torch.load(run_dir / "purifier.pth", weights_only=True)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_attack_shares_measure_the_training_attack_against_the_authors_100_steps_without_touching_the_rng(tmp_path):
    cfg = compose(TINY + ["attack.steps=100", "attack.step_size=2.55"], run_dir=str(tmp_path))
    module = build_module(cfg)
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    shares = module.attack_shares(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert shares["attack_share"].item() == pytest.approx(1.0)  # the same attack, the same start
    assert 0 < shares["val_attack_share"].item() < 1  # the validation SSP is a few steps only


@pytest.mark.parametrize("global_step, per_epoch, warned", [(12, 3, False), (10, 3, True), (0, 3, False), (8, 4, False)])
def test_a_mid_epoch_resume_says_it_is_not_bit_identical(global_step, per_epoch, warned, caplog):
    """Iterations are global_step / 2 (two optimizers a batch): 10 -> iteration 5, 2 batches into an epoch of 3."""
    from types import SimpleNamespace

    from nrp_lightning.callbacks import ResumeNotice

    ResumeNotice().on_train_start(SimpleNamespace(global_step=global_step, num_training_batches=per_epoch), None)
    assert ("not bit-identical" in caplog.text) is warned
    if warned:
        assert "resumed at iteration 5, 2 batches into an epoch of 3" in caplog.text
