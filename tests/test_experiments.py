"""Ablations, attack/backbone groups, multirun folders, W&B fallback, DDP and multi-node configs; the photo
screens' input errors and scripts/ship_purifier.py."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nrp_lightning.config import CONF_DIR, compose
from nrp_lightning.train import build_module

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from test_train import TINY  # noqa: E402

ABLATIONS = sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml"))


def _module(tmp_path, *overrides):
    swaps_attack = {"ablation=gnp", "ablation=fgsp", "attack=classifier"} & set(overrides)
    base = [o for o in TINY if not o.startswith("attack.")] if swaps_attack else TINY
    return build_module(compose(base + list(overrides), run_dir=str(tmp_path)))


def _step_terms(module, x):
    """One purifier-loss evaluation exactly as training_step does it (without optimizer steps)."""
    feat_clean = module.features(x)
    purified = module.purifier(module.find_adversaries(x))
    return module.purifier_loss(x, purified, feat_clean)


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("experiment", ["demo", "nrp_full"])
def test_every_ablation_composes_with_every_experiment(ablation, experiment, tmp_path):
    cfg = compose([f"experiment={experiment}", f"ablation={ablation}"], run_dir=str(tmp_path))
    assert cfg.ablation_name == ablation and cfg.run_name == f"{experiment}-{ablation}"


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_the_first_validation_runs_for_every_ablation(ablation, tmp_path):
    """Every ablation's training input is measured against the reference SSP at the first
    validation. GNP's noise has no budget (``eps=None``) and once died there on ``float(None)``,
    250 iterations into a full-length Fig. 5 run that a 300-step sweep with ``val_every=1000`` never
    validated. Through ``validation_step``, as training calls it."""
    module = _module(tmp_path, f"ablation={ablation}", "module.reference_steps=3")
    module.log_dict = lambda *args, **kwargs: None  # no trainer attached
    out = module.validation_step(torch.rand(2, 3, 32, 32), 0)
    shares = module._attack_shares
    assert torch.isfinite(shares["attack_share"]) and shares["attack_share"] > 0
    assert out["purified"].shape == (2, 3, 32, 32)


def test_gnp_never_calls_ssp(tmp_path, monkeypatch):
    import nrp_lightning.attacks.ssp as ssp_module

    def forbidden(*a, **k):
        raise AssertionError("SSP called in the GNP ablation")

    monkeypatch.setattr(ssp_module, "ssp", forbidden)
    module = _module(tmp_path, "ablation=gnp", "attack.sigma=8")
    x = torch.rand(2, 3, 32, 32)
    x_noisy = module.find_adversaries(x)
    assert 0 < (x_noisy - x).std() < 0.1 and x_noisy.min() >= 0 and x_noisy.max() <= 1
    with pytest.raises(AssertionError, match="SSP called"):
        _module(tmp_path, "ablation=none").find_adversaries(x)


def test_no_feat_has_zero_feature_loss_gradient(tmp_path):
    x = torch.rand(2, 3, 32, 32)
    for ablation, expect_zero in (("no_feat", True), ("none", False)):
        module = _module(tmp_path, f"ablation={ablation}")
        terms = _step_terms(module, x)
        feat_part = module.hparams.lam * terms["loss_feat"]
        if expect_zero:
            assert not feat_part.requires_grad or not any(
                g is not None and g.abs().sum() > 0
                for g in torch.autograd.grad(feat_part, list(module.purifier.parameters()), allow_unused=True))
        else:
            grads = torch.autograd.grad(feat_part, list(module.purifier.parameters()), allow_unused=True)
            assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("ablation,check", [
    ("no_pixel", lambda m: m.hparams.gamma == 0), ("no_adv", lambda m: m.hparams.alpha == 0),
    ("vanilla_gan", lambda m: m.generator_gan_loss.__name__ == "vanilla_generator_loss"),
])
def test_loss_ablations_change_the_purifier_objective(ablation, check, tmp_path):
    full, ablated = _module(tmp_path, "ablation=none"), _module(tmp_path, f"ablation={ablation}")
    ablated.load_state_dict(full.state_dict())
    assert check(ablated)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    torch.manual_seed(1)
    a = _step_terms(full, x)["loss_purifier"]
    torch.manual_seed(1)
    b = _step_terms(ablated, x)["loss_purifier"]
    assert not torch.isclose(a, b)


def test_fgsp_attacks_a_classifier_with_its_own_prediction(tmp_path):
    module = _module(tmp_path, "ablation=fgsp", "attack.eps=8")
    x = torch.rand(2, 3, 32, 32)
    x_adv = module.find_adversaries(x)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and (x_adv != x).any()
    clf = module.attack.classifier
    label = clf(x).argmax(1)
    ce = torch.nn.functional.cross_entropy
    assert ce(clf(x_adv), label) > ce(clf(x), label)


@pytest.mark.parametrize("method", ["mifgsm", "dim"])
def test_classifier_attack_inputs_raise_the_cross_entropy_of_the_own_prediction(method, tmp_path):
    """``attack=classifier``: iterative logit-space inputs of MobileNetV2 at the crop's own size,
    inside the budget, further from the classifier's own clean prediction than x is; a method
    that ``attacks.transfer`` does not have is refused by name."""
    from nrp_lightning.attacks.training_inputs import ClassifierAttack

    module = _module(tmp_path, "attack=classifier", f"attack.method={method}", "attack.eps=8", "attack.steps=3")
    assert isinstance(module.attack, ClassifierAttack) and module.attack.classifier.input_size is None
    assert repr(module.attack) == f"ClassifierAttack(method={method}, eps=8, steps=3, classifier=mobilenet_v2)"
    torch.manual_seed(0)
    x = torch.rand(2, 3, 48, 48)
    x_adv = module.find_adversaries(x)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and (x_adv - x).abs().max() > 7 / 255
    clf = module.attack.classifier
    label = clf(x).argmax(1)
    ce = torch.nn.functional.cross_entropy
    assert ce(clf(x_adv), label) > ce(clf(x), label) + 1.0
    with pytest.raises(ValueError, match="method must be one of fgsm, ifgsm, mifgsm, dim; got 'pgd'"):
        ClassifierAttack(clf, method="pgd")


def test_backbone_group_reaches_every_extractor(tmp_path):
    for overrides, name in [(["backbone=vgg16", "backbone.pretrained=false", "backbone.layer=9"], "vgg16[:9]"),
                            (["backbone=vgg19", "backbone.pretrained=false"], "vgg19[:18]"),
                            (["backbone=vgg19_relu3_1", "backbone.pretrained=false"], "vgg19_relu3_1"),
                            (["backbone=mobilenet_v2", "backbone.layer=4"], "mobilenet_v2[:4]"),
                            (["backbone=timm", "backbone.model_name=resnet18", "backbone.pretrained=false",
                              "backbone.out_index=1"], "resnet18@1")]:
        base = [o for o in TINY if not o.startswith("backbone.")]
        module = build_module(compose(base + overrides, run_dir=str(tmp_path)))
        assert module.features.name == name
        assert module.features(torch.rand(1, 3, 32, 32)).ndim == 4


def test_wandb_logger_falls_back_to_offline_without_a_key(tmp_path, monkeypatch):
    from nrp_lightning import loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert loggers.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(loggers, "_reachable", lambda *a, **k: False)
    assert loggers.wandb_mode() == "offline"


def test_wandb_logger_config_builds_offline_with_tags(tmp_path):
    from hydra.utils import instantiate

    cfg = compose(TINY + ["logger=wandb", "ablation=no_feat"], run_dir=str(tmp_path))
    logger = instantiate(cfg.logger.wandb)
    try:
        run = logger.experiment
        assert run.settings.mode == "offline" or os.environ.get("WANDB_MODE") == "offline"
        assert {"experiment=demo", "ablation=no_feat", "backbone=mobilenet_v2", "attack=ssp_fast"} <= set(run.tags)
    finally:
        import wandb

        wandb.finish()


def test_multinode_slurm_launcher_composes(tmp_path):
    cfg = compose(["experiment=nrp_full", "hydra/launcher=slurm", "trainer.num_nodes=2"], run_dir=str(tmp_path))
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4


@pytest.mark.slow
def test_ddp_multirun_two_ablations_two_ranks(tmp_path):
    """`-m ablation=none,no_feat` with 2 CPU processes each (gloo): two job folders, no re-run
    sweep, different crops on each rank, identical parameters on both ranks; the sweep's table."""
    # src/ first: the package of this checkout, not whichever one the interpreter has installed.
    env = {**os.environ, "NRP_OUTPUT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", *TINY, "ablation=none,no_feat", "steps=3",
           "val_every=1000", "val_attack.steps=1", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.strategy=ddp_find_unused_parameters_true", "data.batch_size=4",
           "+callbacks.rank_probe._target_=tests.rank_probe.SaveRankParameters",
           "+callbacks.rank_probe.dirpath=${paths.run_dir}/ranks"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted((p.parent for p in tmp_path.glob("multirun/*/*/*/ranks")), key=lambda p: p.name)
    assert [j.name for j in jobs] == ["0_ablation=none", "1_ablation=no_feat"]
    assert len(list(tmp_path.glob("multirun/*/*"))) == 1  # one sweep, not one per rank
    for job in jobs:
        r0, r1 = (torch.load(job / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
        assert r0["world_size"] == r1["world_size"] == 2
        assert r0["first_batch"].shape[0] == 2  # global batch 4 split over 2 ranks
        assert not torch.equal(r0["first_batch"], r1["first_batch"])
        for k in r0["state"]:
            assert torch.equal(r0["state"][k], r1["state"][k]), k
        assert (job / "purifier.pth").is_file() and (job / "checkpoints" / "last.ckpt").is_file()

    from experiments.collect_ablations import collect, markdown

    rows = collect(jobs[0].parent)
    assert [r["ablation"] for r in rows] == ["none", "no_feat"]
    assert markdown(rows).count("\n") == 3 and all(r["psnr_adv"] > 0 for r in rows)


def test_multirun_job_folders_are_named_by_what_is_swept(monkeypatch):
    from nrp_lightning.config import job_dirname

    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "experiment=demo", "ablation=gnp,fgsp", "data.source.names=[a,b]"])
    assert job_dirname(1, ["experiment=demo", "ablation=fgsp", "data.source.names=[a,b]"]) == "1_ablation=fgsp"
    monkeypatch.setattr(sys, "argv", ["eval.py", "-m", "victims=offline", "attacks.SSP.features.layer=4,7"])
    assert job_dirname(0, ["victims=offline", "attacks.SSP.features.layer=4"]) == "0_attacks.SSP.features.layer=4"
    monkeypatch.setattr(sys, "argv", ["eval.py", "-m", "victims=offline", "seed=1"])
    assert job_dirname(1, ["victims=offline", "seed=1"]) == "1_victims=offline"  # a group of conf/evaluation/
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "backbone=vgg19", "steps=3"])
    assert job_dirname(2, ["backbone=vgg19", "steps=3"]) == "2_backbone=vgg19"
    long = [f"key{i}.x={'v' * 20}" for i in range(10)]
    assert len(job_dirname(3, long)) <= 102 and "/" not in job_dirname(3, ["a/b=1"])


def test_the_screens_refuse_a_folder_without_readable_images_in_one_line(tmp_path, capsys):
    """``--photos`` of every screen (probe_purifier, probe_gate, calibrate_gate, ...): a missing
    folder, one without images and one with an unreadable file each end in a usage error that
    names it, not a traceback; readable odd formats (grayscale, RGBA, 16-bit) give 5 views each."""
    import argparse

    import numpy as np
    from PIL import Image

    from nrp_lightning.eval_data import photo_views_or_exit

    parser = argparse.ArgumentParser(prog="screen")
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "photo.jpg").write_bytes(b"not a jpeg")
    for root, message in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "no images under"),
                          (broken, "photo.jpg")):
        with pytest.raises(SystemExit):
            photo_views_or_exit(parser, root)
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.new("L", (300, 200), 90).save(odd / "gray.png")
    Image.new("RGBA", (64, 80), (10, 200, 30, 100)).save(odd / "rgba.png")
    Image.fromarray(np.full((50, 70), 40000, dtype=np.uint16)).save(odd / "deep.png")
    views = photo_views_or_exit(parser, odd, size=32)
    assert views.shape == (15, 3, 32, 32) and 0 <= float(views.min()) and float(views.max()) <= 1


def _training_run(tmp_path, gate: dict | None):
    """A finished run folder as train.py leaves it (purifier.pth, .hydra/), and a corpus manifest."""
    from nrp_lightning.models.purifier import RRDBPurifier

    run = tmp_path / "outputs" / "run"
    (run / ".hydra").mkdir(parents=True)
    torch.save(RRDBPurifier(8, 1, 4).state_dict(), run / "purifier.pth")
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=nrp_cpu\n- attack=classifier\n")
    (run / ".hydra" / "config.yaml").write_text("steps: 2000\n")
    if gate is not None:
        (run / "purifier.json").write_text(json.dumps({"gate": gate}))
    manifest = tmp_path / "MANIFEST.csv"
    manifest.write_text("name,split,sha256,licence\nkite.jpg,train,ab12,LGPL-3.0\npath.jpg,heldout,cd34,CC0\n")
    return run, manifest


@pytest.mark.parametrize("calibrated", [True, False])
def test_ship_purifier_carries_over_the_gate_calibrated_for_the_run(calibrated, tmp_path):
    """The card of a shipped purifier holds the gate ``calibrate_gate.py RUN/purifier.pth --write``
    recorded beside the run (it was calibrated on the very bytes shipped), so the recorded command
    sequence is complete; without one the card has no gate, and ``load_nrp(gate=True)`` says so."""
    from scripts.ship_purifier import ship
    from nrp_lightning.gate import GateConfigError, GateSpec

    gate = {"backbone": "mobilenet_v2", "layer": 7, "threshold": 0.318}
    run, manifest = _training_run(tmp_path, gate if calibrated else None)
    dest = ship(run, manifest=manifest, dest=tmp_path / "pretrained" / "nrp_cpu.pth")
    card = json.loads(dest.with_suffix(".json").read_text())
    assert dest.read_bytes() == (run / "purifier.pth").read_bytes()
    assert card["training_command"] == "python train.py experiment=nrp_cpu attack=classifier"
    assert [p["name"] for p in card["training_photos"]] == ["kite.jpg"]
    if calibrated:
        assert card["gate"] == gate
        assert GateSpec.from_metadata(dest.with_suffix(".json")).threshold == 0.318
    else:
        assert "gate" not in card
        with pytest.raises(GateConfigError, match="calibrate_gate.py"):
            GateSpec.from_metadata(dest.with_suffix(".json"))


def test_ship_purifier_records_dataset_manifests_and_a_labelled_evaluation_as_rerunnable_commands(tmp_path):
    """A purifier trained on several folders and chosen by a NeurIPS-2017 screen: each dataset folder
    is recorded by its manifest, the machine's own paths leave the commands, the candidate points at
    the shipped file, and a run that scored under ``auto`` precision records what that was."""
    from scripts.ship_purifier import ship

    run, manifest = _training_run(tmp_path, None)
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=nrp_real\n- seed=0\n- paths.output_root=/x/outputs\n")
    coco = tmp_path / "coco128" / "MANIFEST.csv"
    coco.parent.mkdir()
    coco.write_text("file,sha256,source,licence\na.jpg,ab,COCO a.jpg,Flickr\nb.jpg,cd,COCO b.jpg,Flickr\n")
    screen = tmp_path / "eval"
    (screen / ".hydra").mkdir(parents=True)
    (screen / ".hydra" / "overrides.yaml").write_text(
        "- experiment=neurips_screen\n- split=test\n- defended_victims=[efficientnet_lite0]\n"
        "- +candidates.NRP_real=/x/outputs/run/purifier.pth\n- cache_dir=/x/cache\n")
    (screen / ".hydra" / "config.yaml").write_text("precision: auto\n")
    (screen / "cli.log").write_text("evaluating on cpu, channels_last bf16 autocast\n")
    cell = {"kind": "clean", "source": "-", "attack": "clean", "eps": 0.0, "victim": "efficientnet_lite0", "n": 2}
    (screen / "results.jsonl").write_text("".join(json.dumps({**cell, "defense": d, "top1": 50.0}) + "\n"
                                                  for d in ("none", "JPEG", "NRP", "NRP_real")))
    dest = ship(run, screen, manifest, tmp_path / "pretrained" / "nrp_real.pth", (coco,), "NRP_real")
    card = json.loads(dest.with_suffix(".json").read_text())
    assert card["training_command"] == "python train.py experiment=nrp_real seed=0"
    assert [p["name"] for p in card["training_photos"]] == ["kite.jpg"]
    assert card["training_images"] == [{"folder": "coco128", "manifest_sha256": hashlib.sha256(coco.read_bytes()).hexdigest(),
                                        "images": 2, "licences": ["Flickr"]}]
    assert "heldout_evaluation" not in card
    assert card["neurips_evaluation"]["command"] == (
        "python eval.py experiment=neurips_screen split=test 'defended_victims=[efficientnet_lite0]' "
        "+candidates.NRP_real=src/nrp_lightning/pretrained/nrp_real.pth precision=bf16")
    assert [r["defense"] for r in card["neurips_evaluation"]["rows"]] == ["none", "JPEG", "NRP_real"]


def test_ship_purifier_refuses_a_broken_run_card_with_the_command_that_mends_it(tmp_path):
    from scripts.ship_purifier import ship

    run, manifest = _training_run(tmp_path, None)
    (run / "purifier.json").write_text("{not json")
    with pytest.raises(SystemExit, match="calibrate_gate.py .*purifier.pth --write"):
        ship(run, manifest=manifest, dest=tmp_path / "pretrained" / "nrp_cpu.pth")
    assert not (tmp_path / "pretrained").exists()


def test_ship_purifier_refuses_a_gate_calibrated_on_other_weights(tmp_path):
    """calibrate_gate.py records the sha256 of the file it calibrated; a run that went on (new
    purifier.pth) must be calibrated again before it ships with a gate."""
    import hashlib

    from scripts.ship_purifier import ship

    run, manifest = _training_run(tmp_path, None)
    sha = hashlib.sha256((run / "purifier.pth").read_bytes()).hexdigest()
    gate = {"backbone": "mobilenet_v2", "layer": 7, "threshold": 0.3, "calibration": {"purifier_sha256": sha}}
    (run / "purifier.json").write_text(json.dumps({"gate": gate}))
    dest = tmp_path / "pretrained" / "nrp_cpu.pth"
    assert json.loads(ship(run, manifest=manifest, dest=dest).with_suffix(".json").read_text())["gate"] == gate
    gate["calibration"]["purifier_sha256"] = "0" * 64
    (run / "purifier.json").write_text(json.dumps({"gate": gate}))
    with pytest.raises(SystemExit, match="calibrated on other weights"):
        ship(run, manifest=manifest, dest=tmp_path / "elsewhere" / "nrp_cpu.pth")
    assert not (tmp_path / "elsewhere").exists()


def test_results_csv_files_are_what_the_shipped_cards_say(tmp_path):
    """results/*.csv are generated from the cards (scripts/results_csv.py); --check fails on a stale file."""
    from scripts.results_csv import main, tables

    assert main(["--check"]) == 0
    assert {"nrp_cpu-heldout.csv", "nrp_cpu_ssp-heldout.csv", "nrp_real-neurips.csv"} <= set(tables())
    assert main(["--out", str(tmp_path)]) == 0
    (tmp_path / "nrp_cpu-heldout.csv").write_text("command,top1\n")
    assert main(["--out", str(tmp_path), "--check"]) == 1
