"""``make demo`` run again: a fresh run beside the finished one, said in one line."""
import subprocess
import sys

from test_train import TINY, _env

from nrp_lightning.demo import fresh_run_beside


def _earlier_run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")


def test_a_free_run_folder_or_a_chosen_run_is_left_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setenv("NRP_OUTPUT_ROOT", str(tmp_path))
    assert fresh_run_beside(["experiment=demo"]) is None
    _earlier_run(tmp_path / "demo-none")
    for chosen in ("resume=true", "run_name=mine", "ckpt_path=x.ckpt", "hydra.run.dir=elsewhere", "--cfg"):
        assert fresh_run_beside(["experiment=demo", chosen]) is None
    assert fresh_run_beside(["experiment=demo"]) == (tmp_path / "demo-none", tmp_path / "demo-none-2")
    assert fresh_run_beside(["experiment=demo", "ablation=gnp"]) is None  # demo-gnp is free


def test_the_demo_run_twice_starts_a_fresh_run_beside_the_earlier_ones(tmp_path):
    _earlier_run(tmp_path / "demo-none")
    _earlier_run(tmp_path / "demo-none-2")
    proc = subprocess.run([sys.executable, "-m", "nrp_lightning.demo", *TINY, "steps=1", "val_every=1"],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"demo: {tmp_path / 'demo-none'} already holds a run, so this one starts fresh in "
                        f"{tmp_path / 'demo-none-3'} (resume=true would continue the earlier one)")
    assert lines[-1].startswith("demo: feat_dist_adv=") and lines[-1].endswith(f"{tmp_path / 'demo-none-3'}/purifier.pth")
    assert (tmp_path / "demo-none-3" / "purifier.pth").is_file()
    assert sorted(p.name for p in (tmp_path / "demo-none").iterdir()) == ["checkpoints"]  # untouched
