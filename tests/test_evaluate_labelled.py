"""Labelled evaluation: per-image outcomes, success among the clean-correct images, paired
(McNemar) tables, the paper's Table 1 rows, candidate purifiers and the NeurIPS presets."""
import pytest
import torch
from _tiny import smooth_images, tiny_classifier

from nrp_lightning.attacks.transfer import fgsm, mifgsm
from nrp_lightning.config import compose
from nrp_lightning.defenses import BitDepth, GaussianBlur
from nrp_lightning.defenses.base import Defense
from nrp_lightning.eval_data import EvalSet
from nrp_lightning.evaluation import paper
from nrp_lightning.evaluation.cli import candidates_from_config
from nrp_lightning.evaluation.grid import Grid, run_grid
from nrp_lightning.evaluation.tables import paired_cell, write_reports

torch.set_num_threads(2)


class CountingBlur(Defense):
    """A blur that counts the images it defends (outside its repr, which keys the cache)."""

    def __init__(self, counter):
        super().__init__()
        self.blur, self.counter = GaussianBlur(1.0), counter

    def extra_repr(self):
        return "counting"

    def forward(self, x):
        self.counter["images"] += len(x)
        return self.blur(x)


def _labelled_grid(**kwargs):
    x = smooth_images(8, size=32)
    victims = {"src": tiny_classifier(0, name="src"), "vic": tiny_classifier(1, name="vic")}
    with torch.no_grad():  # labels: what the victim predicts on clean images, but two of them wrong
        labels = victims["vic"](x).argmax(1)
    labels[:2] = (labels[:2] + 1) % 10
    defaults = dict(data=EvalSet(x, labels, [f"img{i}" for i in range(8)], "tiny labelled set"),
                    sources={"src": tiny_classifier(0, name="src")},
                    attacks={"FGSM": fgsm(eps=8), "MI-FGSM": mifgsm(eps=8, steps=3)},
                    defenses={"Bits": BitDepth(4), "Blur": GaussianBlur(1.0)}, victims=victims,
                    defended_victims=["vic"], batch_size=4)
    return Grid(**{**defaults, **kwargs})


def _row(rows, kind, attack, defense, victim="vic"):
    return next(r for r in rows if r["kind"] == kind and r["attack"] == attack and r["defense"] == defense
                and r["victim"] == victim)


def test_rows_hold_per_image_outcomes_and_success_among_clean_correct_images(tmp_path):
    grid = _labelled_grid()
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    clean = _row(rows, "clean", "clean", "none")
    assert clean["correct"] == "00111111" and clean["top1"] == 75.0 and clean["n_clean_correct"] == 6
    for r in rows:
        if r["kind"] in ("clean", "transfer") and r["victim"] == "vic":
            assert len(r["correct"]) == r["n"] == 8
            assert r["correct"].count("1") == round(r["top1"] * r["n"] / 100)
            wrong_of_right = sum(1 for c, a in zip(clean["correct"], r["correct"]) if c == "1" and a == "0")
            assert r["success_clean_correct"] == round(100 * wrong_of_right / 6, 2)
    assert clean["success_clean_correct"] == 0.0  # nothing defends against its own clean images


def test_unlabelled_rows_have_no_per_image_outcomes(tmp_path):
    grid = _labelled_grid()
    grid.data = EvalSet(grid.data.images, torch.full((8,), -1), grid.data.names)
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    assert not any("correct" in r or "success_clean_correct" in r for r in rows)
    text = write_reports(rows, grid, tmp_path / "out", tmp_path / "cache").read_text()
    assert "Paired against" not in text and "classifies right when clean" not in text


@pytest.mark.parametrize("correct, ref, expected", [
    ("1100", "1010", "+0.0 (1/1, p=1)"),
    ("111111", "000000", "+100.0 (6/0, p=0.031)"),
    ("0000001111", "1111111111", "-60.0 (0/6, p=0.031)"),
])
def test_a_paired_cell_counts_discordant_images_and_tests_them(correct, ref, expected):
    assert paired_cell({"correct": correct}, {"correct": ref}) == expected


def test_a_paired_cell_is_a_dash_without_outcomes_or_on_other_images():
    assert paired_cell({"top1": 50.0}, {"correct": "10"}) == "-"
    assert paired_cell({"correct": "101"}, {"correct": "10"}) == "-"
    assert paired_cell(None, {"correct": "10"}) == "-"


def test_report_pairs_each_defence_with_the_references_once(tmp_path):
    grid = _labelled_grid(paired_with=["Bits", "Blur"], paper_table1=True)
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    text = write_reports(rows, grid, tmp_path / "out", tmp_path / "cache").read_text()
    bits = text.split("## Paired against Bits on vic")[1].split("##")[0]
    blur = text.split("## Paired against Blur on vic")[1].split("##")[0]
    assert "| none |" in bits and "| Blur |" in bits
    assert "| none |" in blur and "| Bits |" not in blur  # Blur vs Bits is already in the Bits table
    header = next(line for line in bits.splitlines() if line.startswith("| Defence"))
    assert header == "| Defence | clean | FGSM (src) | MI-FGSM (src) |"
    expected = paired_cell(_row(rows, "transfer", "FGSM", "Blur"), _row(rows, "transfer", "FGSM", "Bits"))
    assert f"| Blur | {paired_cell(_row(rows, 'clean', 'clean', 'Blur'), _row(rows, 'clean', 'clean', 'Bits'))} | {expected} |" in bits
    assert "classifies right when clean" in text
    assert "The paper's Table 1" in text and "| Ensemble | NRP | 3.7 | 7.9 | 10.1 | 27.8 | 11.4 | 31.9 |" in text


def test_paired_with_must_name_a_defence_of_the_grid():
    with pytest.raises(ValueError, match="paired_with names defences that are not in the grid: \\['JPEG'\\]"):
        _labelled_grid(paired_with=["JPEG"])


def test_each_set_is_defended_once_for_all_victims(tmp_path):
    """A purifier pass over hundreds of images takes minutes on a CPU: the victims share it."""
    counter = {"images": 0}
    grid = _labelled_grid(defenses={"Blur": CountingBlur(counter)}, defended_victims=["src", "vic"])
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    assert counter["images"] == 8 * 3  # clean (with its fidelity row), FGSM, MI-FGSM: once each, not per victim
    assert any(r["kind"] == "fidelity" and r["defense"] == "Blur" for r in rows)
    run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    assert counter["images"] == 8 * 3  # a finished grid defends nothing again


def test_the_paper_rows_cover_table1s_five_sources_and_six_attacks():
    assert list(paper.TABLE1) == ["Inc-v3", "Inc-v4", "IncRes-v2", "Res-v2-152", "Ensemble"]
    assert all(len(v) == len(paper.TABLE1_ATTACKS) for d in paper.TABLE1.values() for v in d.values())


@pytest.mark.parametrize("experiment", ["neurips", "neurips_screen"])
@pytest.mark.parametrize("split", ["dev", "test"])
def test_the_neurips_presets_choose_a_split_and_pair_with_jpeg_and_the_purifier(experiment, split):
    cfg = compose([f"experiment={experiment}", f"split={split}"], config_name="eval")
    assert cfg.data.split == split and cfg.experiment_name == f"{experiment}-{split}"
    assert cfg.data.size == 224 and cfg.data.crop == 0.875 and cfg.data.root.endswith("data/neurips2017")
    assert list(cfg.paired_with) == ["JPEG", "NRP"] and set(cfg.paired_with) <= set(cfg.defenses)
    assert set(cfg.defended_victims) <= set(cfg.victims) and "mobilenet_v2" not in cfg.defended_victims
    kept = {k for k, v in cfg.attacks.items() if v is not None}
    assert kept == ({"MI-FGSM", "DIM"} if experiment == "neurips_screen"
                    else {"FGSM", "FGSM-TI", "MI-FGSM", "MI-FGSM-TI", "DIM", "DIM-TI", "SSP"})


def test_candidates_join_as_plain_purifiers_and_may_not_reuse_a_label():
    from nrp_lightning.purify import DEFAULT_PURIFIER

    found = candidates_from_config({"NRP_B": str(DEFAULT_PURIFIER)}, {"JPEG": {}})
    assert list(found) == ["NRP_B"] and str(DEFAULT_PURIFIER) in found["NRP_B"].weights
    with pytest.raises(ValueError, match="candidates \\['JPEG'\\] have the labels of the preset's defences"):
        candidates_from_config({"JPEG": str(DEFAULT_PURIFIER)}, {"JPEG": {}})


def test_apgd_stays_in_budget_fools_more_than_fgsm_and_draws_eot_through_random_defences():
    from nrp_lightning.attacks.adaptive import AdaptiveAttack
    from nrp_lightning.attacks.apgd import APGD
    from nrp_lightning.defenses import RandomResizePad

    victim = tiny_classifier(1, name="vic").eval()
    x = smooth_images(8, size=32)
    with torch.no_grad():
        y = victim(x).argmax(1)
    adv = AdaptiveAttack(APGD(eps=4, steps=10), eot_samples=2)(x, y, victim, BitDepth(8))
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and 0 <= adv.min() and adv.max() <= 1
    x_fgsm = fgsm(eps=4)(x, y, victim)
    with torch.no_grad():
        accuracy = lambda z: (victim(z).argmax(1) == y).float().mean().item()  # noqa: E731
        assert accuracy(adv) <= accuracy(x_fgsm) and accuracy(adv) < 1.0
    attack = AdaptiveAttack(APGD(eps=4, steps=2), eot_samples=3, name="APGD-CE(4/255)")
    assert attack.label(RandomResizePad()) == "APGD-CE(4/255)+EOT3" and attack.label(BitDepth(4)) == "APGD-CE(4/255)"
    with pytest.raises(ValueError, match="APGD needs"):
        APGD(eps=0)


def test_adaptive_attacks_are_paired_too(tmp_path):
    from nrp_lightning.attacks.adaptive import AdaptiveAttack
    from nrp_lightning.attacks.apgd import APGD

    grid = _labelled_grid(attacks={"FGSM": fgsm(eps=8)}, paired_with=["Bits"],
                          adaptive={"APGD": AdaptiveAttack(APGD(eps=8, steps=3), eot_samples=2, name="APGD-CE(8/255)")})
    rows = run_grid(grid, tmp_path / "out", tmp_path / "cache", progress=False)
    text = write_reports(rows, grid, tmp_path / "out", tmp_path / "cache").read_text()
    table = text.split("## Paired against Bits on vic")[1].split("##")[0]
    assert "| Defence | clean | FGSM (src) | APGD-CE(8/255) (white-box) |" in table
    blur_row = next(line for line in table.splitlines() if line.startswith("| Blur |"))
    assert blur_row.count("p=") == 3


def test_the_adaptive_neurips_preset_runs_apgd_at_4_and_16_on_100_images():
    cfg = compose(["experiment=neurips_adaptive", "split=test"], config_name="eval")
    assert cfg.data.limit == 100 and cfg.data.split == "test" and cfg.defended_victims == ["efficientnet_lite0"]
    assert {cfg.adaptive[k].attack.eps for k in ("APGD4", "APGD16")} == {4, 16}
    assert cfg.adaptive.APGD16.attack._target_ == "nrp_lightning.attacks.apgd.APGD"
    assert {"JPEG", "NRP", "NRP_dynamic"} <= set(cfg.defenses)
