"""Runs that survive a non-finite loss, a signal and a torn checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from test_train import ROOT, TINY, _env, _train_cmd, _wait_for_first_checkpoint

from nrp_lightning.config import compose
from nrp_lightning.lit_module import DivergenceError, NRPModule
from nrp_lightning.train import train

NAN_ITERATIONS = (2, 3)  # 1-based iterations whose purifier loss is made NaN


def nan_at(iterations, original=NRPModule.purifier_loss):
    """A purifier_loss that returns NaN (and so NaN gradients) on the given iterations."""
    def purifier_loss(self, x, purified, feat_clean):
        terms = original(self, x, purified, feat_clean)
        if self.trainer.global_step // 2 + 1 in iterations:
            terms["loss_purifier"] = terms["loss_purifier"] * float("nan")
        return terms
    return purifier_loss


@pytest.mark.parametrize("fused", [True, False])
def test_a_non_finite_step_is_skipped_counted_and_logged(tmp_path, monkeypatch, fused):
    """Weights and Adam state after iterations 2-3 (NaN) equal those after iteration 1; training
    goes on from there and the CSV has the counter and both gradient norms."""
    monkeypatch.setattr(NRPModule, "purifier_loss", nan_at(NAN_ITERATIONS))
    seen = {}
    original_step = NRPModule.training_step

    def training_step(self, x, batch_idx):
        original_step(self, x, batch_idx)
        opt = self.optimizers()[0].optimizer
        seen[self.trainer.global_step // 2] = (
            {k: v.clone() for k, v in self.purifier.state_dict().items()},
            {k: s["exp_avg"].clone() for k, s in zip(range(3), opt.state.values())})
    monkeypatch.setattr(NRPModule, "training_step", training_step)
    cfg = compose(TINY + ["steps=5", "val_every=5", "checkpoint_every=5", "trainer.log_every_n_steps=1",
                          f"module.fused_adam={fused}", "report=false"], run_dir=str(tmp_path))
    train(cfg)
    for it in NAN_ITERATIONS:
        weights, moments = seen[it]
        assert all(torch.equal(weights[k], seen[1][0][k]) for k in weights)
        assert all(torch.equal(moments[k], seen[1][1][k]) for k in moments)
    assert any(not torch.equal(seen[4][0][k], seen[1][0][k]) for k in seen[1][0])  # it went on
    assert all(torch.isfinite(v).all() for v in seen[5][0].values())
    import csv
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    counts = [float(r["train/nonfinite_steps"]) for r in rows if r.get("train/nonfinite_steps")]
    assert counts == [0, 1, 2, 2, 2]
    assert all(r["train/grad_norm_critic"] for r in rows if r.get("train/nonfinite_steps"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["nrp_nonfinite"] == {"total": 2, "streak": 0}


def test_too_many_non_finite_steps_in_a_row_stop_the_run_naming_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(NRPModule, "purifier_loss", nan_at(range(3, 100)))
    cfg = compose(TINY + ["steps=20", "val_every=100", "checkpoint_every=2", "trainer.log_every_n_steps=1",
                          "module.max_nonfinite_steps=3", "report=false"], run_dir=str(tmp_path))
    with pytest.raises(DivergenceError, match=r"4 iterations in a row up to iteration 6 .*module.max_nonfinite_steps=3") as info:
        train(cfg)
    assert "checkpoints/last.ckpt" in str(info.value)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_the_guard_off_steps_into_nan(tmp_path, monkeypatch):
    monkeypatch.setattr(NRPModule, "purifier_loss", nan_at((2,)))
    cfg = compose(TINY + ["steps=2", "val_every=100", "checkpoint_every=2", "module.divergence_guard=false",
                          "report=false"], run_dir=str(tmp_path))
    train(cfg)
    state = torch.load(tmp_path / "purifier.pth", weights_only=True)
    assert any(not torch.isfinite(v).all() for v in state.values())


def _one_batch_epochs(out_root, run_name: str) -> list[str]:
    """12 tiny iterations, one batch an epoch: whichever iteration a signal stops, the resume starts
    at an epoch boundary, where Lightning restores the random-crop loader exactly (mid-epoch it
    restarts the epoch's batches, so the data order after a resume would differ)."""
    return _train_cmd(out_root, run_name, samples_per_epoch=2)


def _start_and_signal(tmp_path, name: str, signum: int) -> subprocess.CompletedProcess:
    """Start a tiny training run, send ``signum`` once it has written its first checkpoint."""
    proc = subprocess.Popen(_one_batch_epochs(tmp_path, name), env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_first_checkpoint(proc, tmp_path / name)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_and_the_same_command_resumes_from_it(tmp_path, signum):
    """SIGUSR1 / SIGUSR2 (SLURM's time-limit warning) or SIGTERM (preemption): the run finishes its iteration,
    writes checkpoints/signal.ckpt, exits 0; the same command, without resume=true, resumes from it
    and ends bit-identical to an uninterrupted run; the finished run removes signal.ckpt."""
    name = signal.Signals(signum).name
    stopped = _start_and_signal(tmp_path, "stopped", signum)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    saved = tmp_path / "stopped" / "checkpoints" / "signal.ckpt"
    assert f"stopped: {name}: saved {saved} after iteration" in stopped.stderr
    step = torch.load(saved, weights_only=True)["global_step"]
    assert 0 < step < 24 and step % 2 == 0  # a whole iteration: both optimizers stepped

    again = subprocess.run(_one_batch_epochs(tmp_path, "stopped"), env=_env(tmp_path), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {saved}" in (tmp_path / "stopped" / "train.log").read_text()
    assert torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 24
    assert not saved.exists()
    if signum == signal.SIGUSR1:  # once is enough for the bit-identical check
        subprocess.run(_one_batch_epochs(tmp_path, "straight"), env=_env(tmp_path), check=True, capture_output=True,
                       timeout=300)
        straight = torch.load(tmp_path / "straight" / "purifier.pth", weights_only=True)
        resumed = torch.load(tmp_path / "stopped" / "purifier.pth", weights_only=True)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_the_slurm_launcher_asks_for_the_signal_and_requeues(tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from nrp_lightning.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["hydra/launcher=slurm", "experiment=nrp_full"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.signal_delay_s == 90  # submitit: #SBATCH --signal=USR2@90
    assert launcher.max_num_timeout >= 10 and launcher.tasks_per_node == 4
    assert cfg.callbacks.checkpoint_on_signal.requeue is True


def _ddp_cmd(out_root, run_name: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *TINY, "steps=6", "checkpoint_every=2", "val_every=1000",
            "val_attack.steps=1", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.strategy=ddp_find_unused_parameters_true", "data.batch_size=4", "data.samples_per_epoch=4",
            "report=false", f"run_name={run_name}", "+callbacks.rank_probe._target_=tests.rank_probe.SaveRankParameters",
            "+callbacks.rank_probe.dirpath=${paths.run_dir}/ranks", *extra]


@pytest.mark.slow
def test_ddp_resume_after_sigkill_of_the_process_group_matches_an_uninterrupted_run(tmp_path):
    """Two gloo ranks, SIGKILL to the whole process group after the first checkpoint, resume=true:
    both ranks end with parameters equal to each other and to an uninterrupted 2-rank run (each
    rank restores its own random state: its SSP starts and crops go on as they would have)."""
    env = {**_env(tmp_path), "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    straight = subprocess.run(_ddp_cmd(tmp_path, "straight"), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    proc = subprocess.Popen(_ddp_cmd(tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last = _wait_for_first_checkpoint(proc, tmp_path / "killed", timeout_s=300)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < killed_at < 12

    resumed = subprocess.run(_ddp_cmd(tmp_path, "killed", "resume=true"), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=True)["global_step"] == 12
    ranks = {name: [torch.load(tmp_path / name / "ranks" / f"rank{r}.pt", weights_only=True)["state"] for r in (0, 1)]
             for name in ("straight", "killed")}
    for k in ranks["straight"][0]:
        assert torch.equal(ranks["killed"][0][k], ranks["killed"][1][k]), k
        assert torch.equal(ranks["killed"][0][k], ranks["straight"][0][k]), k
