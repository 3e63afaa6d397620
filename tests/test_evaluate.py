"""The grid runner: a small grid end to end, resume after a crash without recomputing, configs."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from _tiny import smooth_images, tiny_classifier

from nrp_lightning.attacks.adaptive import AdaptiveAttack
from nrp_lightning.attacks.transfer import fgsm, mifgsm
from nrp_lightning.defenses import BitDepth, GaussianBlur, RandomResizePad
from nrp_lightning.config import compose
from nrp_lightning.eval_data import EvalSet
from nrp_lightning.evaluation.cli import old_spelling
from nrp_lightning.evaluation.grid import Grid, run_grid
from nrp_lightning.evaluation.plots import labelled_grid
from nrp_lightning.evaluation.tables import write_reports

torch.set_num_threads(2)


def _grid(attacks=None, labelled=False):
    x = smooth_images(6, size=32)
    labels = torch.tensor([1, 2, 3, 4, 5, 6]) if labelled else torch.full((6,), -1)
    return Grid(
        data=EvalSet(x, labels, [f"img{i}" for i in range(6)], "tiny test set"),
        sources={"src": tiny_classifier(0, name="src")},
        attacks=attacks or {"FGSM": fgsm(eps=8), "MI-FGSM": mifgsm(eps=8, steps=3)},
        defenses={"Bits": BitDepth(4), "Blur": GaussianBlur(1.0), "R&P": RandomResizePad()},
        victims={"src": tiny_classifier(0, name="src"), "vic": tiny_classifier(1, name="vic")},
        adaptive={"BPDA": AdaptiveAttack(mifgsm(eps=8, steps=2), eot_samples=2)},
        eps_sweep=[4, 8], sweep_attack="MI-FGSM", sweep_source="src", batch_size=4)


def test_small_grid_end_to_end(tmp_path):
    grid = _grid()
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    report = write_reports(rows, grid, tmp_path / "out", tmp_path / "cache")
    for name in ("results.csv", "results.jsonl", "report.md", "accuracy_vs_eps.png", "samples.png"):
        assert (tmp_path / "out" / name).is_file(), name
    text = report.read_text()
    assert "Table 1 layout" in text and "Table 5 layout" in text and "Adaptive attacks" in text
    assert "No adaptive attack" not in text  # every defence met BPDA
    kinds = {r["kind"] for r in rows}
    assert kinds == {"clean", "transfer", "sweep", "adaptive", "fidelity"}
    clean = [r for r in rows if r["kind"] == "clean" and r["defense"] == "none"]
    assert all(r["top1"] == 100.0 and r["changed"] == 0.0 for r in clean)  # unlabelled: against the clean prediction
    white_box = [r for r in rows if r["kind"] == "transfer" and r["victim"] == "src" and r["defense"] == "none"]
    assert all(r["success_rate"] > 0 for r in white_box)
    scored = [r for r in rows if r["kind"] != "fidelity"]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 and 0 <= r["n_confident"] <= r["n"] for r in scored)
    assert "Clean images behind each defence" in text and "Confident subset of vic" in text
    assert re.search(r"\| none \| - \| - \| 0\.0 \[0\.0, 39\.0\] \|", text)  # 0 of 6 changed: Wilson [0, 39.0]
    labels = ["clean", "FGSM from src", "Bits", "Blur", "R&P"]  # rows: clean, first attack, each defence
    expected = labelled_grid({k: torch.zeros(6, 3, 32, 32) for k in labels}, grid.data.names)
    assert Image.open(tmp_path / "out" / "samples.png").size == expected.size


def test_report_says_in_bold_when_no_adaptive_attack_was_run(tmp_path):
    grid = _grid()
    grid.adaptive = {}
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    text = write_reports(rows, grid, tmp_path / "out", tmp_path / "cache").read_text()
    assert "**No adaptive attack (BPDA/EOT) was run against: Bits, Blur, R&P." in text


class Crash(RuntimeError):
    pass


class CrashingAttack:
    """Wraps an attack; raises on call number ``crash_on`` (a kill mid-grid)."""

    def __init__(self, attack, counter, crash_on=None):
        self.attack, self.counter, self.crash_on, self.eps, self.name = attack, counter, crash_on, attack.eps, attack.name

    def __repr__(self):
        return repr(self.attack)  # the cache key is the attack's, not the wrapper's

    def with_eps(self, eps):
        return CrashingAttack(self.attack.with_eps(eps), self.counter, self.crash_on)

    def __call__(self, x, y, model):
        self.counter["calls"] += 1
        if self.crash_on is not None and self.counter["calls"] == self.crash_on:
            raise Crash("simulated kill")
        return self.attack(x, y, model)


def test_grid_resumes_after_a_crash_without_recomputing_cached_adversarials(tmp_path):
    counter = {"calls": 0}
    attacks = lambda crash_on: {"FGSM": CrashingAttack(fgsm(eps=8), counter, crash_on),  # noqa: E731
                                "MI-FGSM": CrashingAttack(mifgsm(eps=8, steps=2), counter, crash_on)}
    # 6 images in batches of 4: 2 calls per set; sets: FGSM, MI-FGSM, sweep eps 4. Crash in set 2.
    with pytest.raises(Crash):
        run_grid(_grid(attacks(crash_on=4)), tmp_path / "out", tmp_path / "cache", progress=False)
    done = (tmp_path / "out" / "results.jsonl").read_text().count("\n")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1 and done > 0

    counter["calls"] = 0
    grid = _grid(attacks(crash_on=None))
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    assert counter["calls"] == 4  # MI-FGSM and the eps-4 sweep set only; FGSM came from the cache
    fresh = run_grid(_grid(attacks(crash_on=None)), tmp_path / "fresh", tmp_path / "fresh_cache", progress=False)
    key = lambda rs: sorted((r["key"], r.get("top1"), r.get("top5"), r.get("psnr_mean")) for r in rs)  # noqa: E731
    assert key(rows) == key(fresh)  # resumed == uninterrupted, cell for cell

    counter["calls"] = 0
    run_grid(_grid(attacks(crash_on=None)), tmp_path / "out", tmp_path / "cache", progress=False)
    assert counter["calls"] == 0  # a finished grid reruns from the cache alone


def test_labelled_data_scores_against_true_labels(tmp_path):
    rows = run_grid(_grid(labelled=True), tmp_path / "out", tmp_path / "cache", progress=False)
    assert {r["reference"] for r in rows if r["kind"] != "fidelity"} == {"true label"}
    clean = [r for r in rows if r["kind"] == "clean" and r["defense"] == "none"]
    assert all(r["changed"] == 0.0 for r in clean)  # changes are counted against the clean prediction, not the label


@pytest.mark.parametrize("experiment", ["offline", "table1", "table3", "table5", "fig4", "fig5"])
def test_every_experiment_preset_composes(experiment):
    cfg = compose([f"experiment={experiment}", "defenses=with_nrp"], config_name="eval")
    assert cfg.experiment_name == experiment
    assert cfg.attacks and cfg.victims and set(cfg.defended_victims) <= set(cfg.victims)
    if cfg.eps_sweep:
        assert cfg.sweep_attack in cfg.attacks


@pytest.mark.parametrize("experiment", ["offline", "heldout", "neurips", "neurips_screen", "neurips_adaptive"])
def test_evaluation_defaults_to_fp32_on_every_device(experiment):
    """bf16 autocast moved a labelled clean cell beyond noise (docs/performance.md), so every preset
    scores in fp32 unless asked: precision=bf16 or auto is a choice a screen makes, never a default."""
    from nrp_lightning import fast_paths

    cfg = compose([f"experiment={experiment}"], config_name="eval")
    assert cfg.precision == "fp32"
    assert not fast_paths.use_bf16("cpu", cfg.precision, frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))


def test_the_heldout_preset_finds_the_shipped_purifiers_from_any_folder(tmp_path, monkeypatch):
    """``NRP_SSP`` names the package's second purifier through ``${pretrained:...}``: once a path
    relative to the repository root, so ``eval.py experiment=heldout`` run from another folder died
    on a missing file. A name the package does not ship is a one-line error listing what it does."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    from nrp_lightning.defenses import load_nrp
    from nrp_lightning.purify import DEFAULT_PURIFIER

    monkeypatch.chdir(tmp_path)
    cfg = compose(["experiment=heldout"], config_name="eval")
    weights = cfg.defenses.NRP_SSP.weights
    assert weights == str(DEFAULT_PURIFIER.with_name("nrp_cpu_ssp.pth")) and load_nrp(weights).weights.startswith(weights)
    with pytest.raises(InterpolationResolutionError, match="BadConfigError raised while resolving interpolation: "
                       "no purifier 'nrp_gpu.pth' ships in the package; shipped: nrp_cpu.pth, nrp_cpu_ssp.pth, nrp_real.pth"):
        bad = compose(["experiment=heldout", "defenses.NRP_SSP.weights=${pretrained:nrp_gpu.pth}"], config_name="eval")
        OmegaConf.to_container(bad.defenses, resolve=True)


def test_the_old_override_spelling_gets_a_one_line_hint_with_the_new_one():
    assert old_spelling(["evaluation/defenses@defenses=with_nrp", "seed=1"]) == (
        "nrp-eval: `evaluation/defenses@defenses=with_nrp` is the old spelling; the evaluation groups are "
        "top-level now: `defenses=with_nrp`")
    assert old_spelling(["evaluation/experiment=offline"]).endswith("`experiment=offline`")
    assert old_spelling(["experiment=offline", "defenses=with_nrp"]) is None


def test_image_folder_takes_several_crops_per_photo_like_the_embedded_set(tmp_path):
    from hydra.utils import instantiate

    from nrp_lightning.eval_data import embedded, image_folder
    from nrp_lightning.images import save_png

    for i, x in enumerate(smooth_images(2, size=48)):
        save_png(x, tmp_path / f"photo{i}.png")
    cfg = compose(["experiment=offline", "data=image_folder", f"data.root={tmp_path}", "data.size=32"], config_name="eval")
    data = instantiate(cfg.data)  # offline.yaml sets data.crops: the folder source takes it too
    assert data.names == ["photo0.png#0", "photo1.png#0"] and not data.labelled
    three = image_folder(str(tmp_path), size=32, crops=3)
    assert three.images.shape == (6, 3, 32, 32) and three.names[:3] == ["photo0.png#0", "photo0.png#1", "photo0.png#2"]
    assert torch.equal(three.images[::3], data.images)  # crop 0 is the centre square
    assert not torch.equal(three.images[1], three.images[2])  # the corners differ
    assert embedded(size=32, crops=2, names=["astronaut"]).names == ["astronaut#0", "astronaut#1"]
    with pytest.raises(ValueError, match="crops must be in 1..5"):
        image_folder(str(tmp_path), size=32, crops=6)
    for label, x in zip((3, 7), smooth_images(2, size=48, seed=1)):
        save_png(x, tmp_path / "classes" / str(label) / "a.png")
    labelled = image_folder(str(tmp_path / "classes"), size=32, crops=2)
    assert labelled.labels.tolist() == [3, 3, 7, 7] and labelled.names == ["3/a.png#0", "3/a.png#1", "7/a.png#0", "7/a.png#1"]


def test_r_and_p_is_addressable_as_rp_and_still_labelled_r_and_p():
    from nrp_lightning.evaluation.cli import defenses_from_config

    defenses = defenses_from_config(compose(["experiment=offline", "defenses.JPEG=null"], config_name="eval").defenses)
    assert list(defenses) == ["TVM", "Median", "R&P", "BitDepth", "Blur", "NRP"]  # tables and figures say R&P
    dropped = defenses_from_config(compose(["experiment=offline", "~defenses.RP"], config_name="eval").defenses)
    assert "R&P" not in dropped and "TVM" in dropped


def test_labelled_grid_has_a_row_per_label_and_the_images_untouched():
    x = smooth_images(4, size=32)
    rows = {"clean": x, "MI-FGSM from mobilenet_v2": x.flip(-1), "R&P": 1 - x}
    names = ["a_long_photo_name.png#0", "b#0", "c#0", "d#0"]
    img = np.asarray(labelled_grid(rows, names))
    fewer = labelled_grid({"clean": x, "MI-FGSM from mobilenet_v2": x}, names)
    side, pad = 32, 2
    assert img.shape[0] - fewer.height == side + pad and img.shape[1] == fewer.width  # one more row
    label_w = img.shape[1] - 4 * (side + pad) - pad
    header = img.shape[0] - 3 * (side + pad) - pad
    assert label_w > 0 and 0 < header < side
    for i, images in enumerate(rows.values()):
        top = header + pad + i * (side + pad)
        assert (img[top:top + side, :label_w] < 128).any()  # the row's label is drawn
        for j in range(4):
            left = label_w + pad + j * (side + pad)
            tile = img[top:top + side, left:left + side]
            assert np.array_equal(tile, (images[j].permute(1, 2, 0) * 255).round().byte().numpy())
    assert (img[:header, label_w:] < 128).any()  # column names on top


@pytest.mark.parametrize("b, c, p", [(0, 0, 1.0), (3, 3, 1.0), (0, 6, 0.03125), (6, 0, 0.03125),
                                     (1, 9, 0.021484375), (10, 5, 0.301758)])
def test_mcnemar_exact_matches_the_binomial_tail(b, c, p):
    from nrp_lightning.evaluation.metrics import mcnemar_exact
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-6)
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact(-1, 2)


@pytest.mark.parametrize("k, n, low, high", [(0, 10, 0.0, 0.2775), (1, 10, 0.0179, 0.4042), (5, 10, 0.2366, 0.7634),
                                             (10, 10, 0.7225, 1.0), (72, 100, 0.6251, 0.7986)])
def test_wilson_interval_matches_published_values(k, n, low, high):
    from nrp_lightning.evaluation.metrics import wilson_interval

    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


def test_rate_cells_carry_their_interval_and_a_dash_where_a_field_is_missing():
    from nrp_lightning.evaluation.tables import rate_cell

    assert rate_cell({"success_rate": 72.0, "n": 100}, "success_rate") == "72.0 [62.5, 79.9]"
    assert rate_cell({"top1_confident": 80.0, "n_confident": 10, "n": 30}, "success_confident") == "20.0 [5.7, 51.0]"
    assert rate_cell({"top1": 50.0, "n": 4}, "top1_confident") == "-"  # a row from before the confident subset
    assert rate_cell(None, "top1") == "-"


def test_fidelity_and_confident_subset_are_measured_per_defence_and_victim(tmp_path):
    from nrp_lightning.defenses import NoDefense
    from nrp_lightning.evaluation.grid import predict
    from nrp_lightning.evaluation.metrics import psnr_per_image

    grid = _grid()
    grid.adaptive, grid.eps_sweep = {}, []
    grid.defended_victims = ["src", "vic"]  # every defended victim gets its tables
    x, cpu = (grid.data.images * 255).round().byte(), torch.device("cpu")
    clean_top5, prob = predict(grid.victims["vic"], NoDefense(), x, 6, cpu)
    grid.confident_threshold = prob.median().item()  # tiny nets are unsure: half the images are "confident"
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)

    fidelity = {r["defense"]: r for r in rows if r["kind"] == "fidelity"}
    assert set(fidelity) == {"Bits", "Blur", "R&P"}  # once per defence, none is the identity
    blur = psnr_per_image(grid.defenses["Blur"](grid.data.images), grid.data.images)
    assert fidelity["Blur"]["psnr_mean"] == pytest.approx(blur.mean().item(), abs=0.01)
    assert fidelity["Blur"]["psnr_min"] == pytest.approx(blur.min().item(), abs=0.01)
    mask = prob >= grid.confident_threshold
    vic = [r for r in rows if r["victim"] == "vic" and r["kind"] != "fidelity"]
    assert all(r["n_confident"] == mask.sum().item() for r in vic)
    clean = {r["defense"]: r for r in vic if r["kind"] == "clean"}
    blurred_top5, _ = predict(grid.victims["vic"], grid.defenses["Blur"], x, 6, cpu)
    changed = blurred_top5[:, 0] != clean_top5[:, 0]
    assert clean["Blur"]["changed"] == pytest.approx(100 * changed.float().mean().item(), abs=0.01)
    assert clean["Blur"]["changed_confident"] == pytest.approx(100 * changed[mask].float().mean().item(), abs=0.01)

    text = write_reports(rows, grid, tmp_path / "out", tmp_path / "cache").read_text()
    assert "src: clean top-1 changed (%)" in text and "vic: clean top-1 changed (%)" in text
    assert f"Confident subset of vic: {mask.sum().item()} of 6 images" in text and "Confident subset of src" in text


def test_rows_of_older_runs_report_a_dash_then_gain_the_new_fields_without_crafting_again(tmp_path):
    counter = {"calls": 0}
    grid = _grid({"FGSM": CrashingAttack(fgsm(eps=8), counter), "MI-FGSM": CrashingAttack(mifgsm(eps=8, steps=2), counter)})
    grid.adaptive, grid.eps_sweep = {}, []
    run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    results = tmp_path / "out" / "results.jsonl"
    new_fields = ("changed", "confident_threshold", "n_confident", "top1_confident", "changed_confident")
    old_rows = [{k: v for k, v in row.items() if k not in new_fields} for row in map(json.loads, results.read_text().splitlines())
                if row["kind"] != "fidelity"]
    results.write_text("".join(json.dumps(r) + "\n" for r in old_rows))  # results.jsonl as an older version wrote it

    text = write_reports(old_rows, grid, tmp_path / "out", tmp_path / "cache").read_text()
    assert "Confident subset of vic: the images" in text and "| src | Bits | - | - | - |" in text
    assert "| none | - | - | - |" in text  # no PSNR, no changed share: shown as missing, not as zero

    counter["calls"] = 0
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    assert counter["calls"] == 0  # rescored from the cached adversarials
    assert all("n_confident" in r for r in rows if r["kind"] != "fidelity") and any(r["kind"] == "fidelity" for r in rows)


def test_an_entry_a_preset_tunes_but_the_chosen_option_drops_fails_before_any_work():
    from nrp_lightning.evaluation.cli import check_entries

    check_entries(compose(["experiment=offline", "~adaptive.BPDA"], config_name="eval"))
    with pytest.raises(ValueError, match=r"adaptive.BPDA has no _target_.*drop it with ~adaptive.BPDA"):
        check_entries(compose(["experiment=offline", "adaptive=none"], config_name="eval"))


def test_targeted_attacks_score_success_as_the_target_class_and_are_cached_apart(tmp_path):
    # the tiny random classifier is nearly flat (top-1 probability 0.11): a targeted attack needs a wide budget
    grid = _grid(attacks={"MI-FGSM": mifgsm(eps=64, steps=10), "MI-FGSM-T": mifgsm(eps=64, steps=10, targeted=True)})
    grid.targets, grid.eps_sweep, grid.adaptive = 7, [], {}
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    cell = {(r["attack"], r["victim"], r["defense"]): r for r in rows if r["kind"] == "transfer"}
    white_box = cell["MI-FGSM-T", "src", "none"]
    assert white_box["targeted"] is True and "targeted" not in cell["MI-FGSM", "src", "none"]
    predicted = tiny_classifier(0, name="src")(grid.data.images).argmax(1)
    assert not (predicted == 7).all()
    assert white_box["success_rate"] >= 80  # the source itself now says class 7 on most images
    assert white_box["success_rate"] != 100.0 - white_box["top1"] or white_box["top1"] == 0
    grid.targets = 2  # another target: crafted again, not read from the cache of target 7
    rows2 = run_grid(grid, tmp_path / "out2", tmp_path / "cache", progress=False)
    assert len({r["key"] for r in rows2} - {r["key"] for r in rows}) > 0


def test_random_targets_avoid_labels_and_clean_predictions_and_repeat_with_the_seed():
    from nrp_lightning.evaluation.grid import draw_targets

    avoid = torch.tensor([[5, 5], [-1, 7], [3, 4]]).repeat(200, 1)
    t = draw_targets("random", avoid, seed=0)
    assert not (t[:, None] == avoid).any(1).any() and ((0 <= t) & (t < 1000)).all()
    assert torch.equal(t, draw_targets("random", avoid, seed=0)) and not torch.equal(t, draw_targets("random", avoid, 1))
    assert torch.equal(draw_targets(919, avoid, 0), torch.full((600,), 919))
    with pytest.raises(ValueError, match="targets must be 'random' or an ImageNet class"):
        _grid().__class__(**{**_grid().__dict__, "targets": 1000})


@pytest.mark.parametrize("which", ["MI-FGSM", "BPDA through R&P", "BPDA through Bits"])
def test_a_cells_step_bar_counts_the_attacks_forward_passes(which):
    """The second progress bar of a slow cell: its total is the attacked model's forward passes."""
    from nrp_lightning.evaluation.grid import craft, forward_passes

    grid = _grid()
    model = grid.victims["vic"]
    if which == "MI-FGSM":
        attack, kwargs = grid.attacks["MI-FGSM"], {}
    else:
        attack, kwargs = grid.adaptive["BPDA"], {"defense": grid.defenses["R&P" if "R&P" in which else "Bits"]}
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    x = (grid.data.images * 255).round().to(torch.uint8)
    craft(attack, model, x, torch.zeros(len(x), dtype=torch.long), 4, torch.device("cpu"), 0, progress="cell", **kwargs)
    hook.remove()
    assert len(calls) == forward_passes(attack, **kwargs) * 2  # 6 images in batches of 4
    assert forward_passes(attack, **kwargs) == {"MI-FGSM": 3, "BPDA through R&P": 4, "BPDA through Bits": 2}[which]
