"""The lab's diagnostics (lab/probe_*.py): the screens of the notebook (lab/NOTEBOOK.md) import,
count and format what they report. ``make test-lab`` runs them; ``make test`` too."""
import pytest
import torch

def test_probe_purifier_imports_and_formats_its_table_with_intervals():
    """The 1-minute screen of lab/NOTEBOOK.md: importable (a renamed constant once broke it
    unnoticed) and its Markdown table carries Wilson intervals."""
    from lab.probe_purifier import BLACK_BOX, markdown

    row = {"psnr": 34.06, f"changed_{BLACK_BOX}": 40.0, "success_SSP": 54.29}
    table = markdown({"NRP": row}, n=35, attacks=["SSP"])
    assert "| NRP | 34.1 | 40.0 [25.6, 56.4] | 54.3 [38.2, 69.5] |" in table


def test_probe_purifier_paired_table_counts_discordant_images_per_column():
    """``--paired``: the per-image outcomes behind each rate, and the McNemar cells built from them.
    The identity keeps every prediction and lets every attack through that does without a defence;
    a flattening defence changes predictions that the identity keeps, so its cells read 0 / c."""
    from _tiny import smooth_images, tiny_classifier
    from lab.probe_purifier import BLACK_BOX, paired_table, probe

    x = smooth_images(12, size=32)
    victims = {BLACK_BOX: tiny_classifier(0), "mobilenet_v2": tiny_classifier(1)}
    adv = {"SSP": (x + 0.3 * torch.randn_like(x)).clamp(0, 1)}
    defenses = {"none": lambda b: b, "flat": lambda b: b.mean(dim=(2, 3), keepdim=True).expand_as(b)}
    outcomes = {}
    results, _ = probe(defenses, x, adv, victims, outcomes)
    assert not outcomes["none"][f"changed_{BLACK_BOX}"].any() and results["none"][f"changed_{BLACK_BOX}"] == 0
    flat = outcomes["flat"][f"changed_{BLACK_BOX}"]
    assert results["flat"][f"changed_{BLACK_BOX}"] == pytest.approx(100 * flat.float().mean().item())
    assert results["none"]["detail"] == pytest.approx(100) and results["flat"]["detail"] == pytest.approx(0, abs=1e-3)
    from lab.probe_purifier import ensemble

    torch.testing.assert_close(ensemble([defenses["none"], defenses["flat"]])(x), (x + defenses["flat"](x)) / 2)
    table = paired_table(outcomes, "none")
    assert "| against none |" in table and "none |" not in table.splitlines()[-1]
    c = int(flat.sum())
    assert f"| flat | 0 / {c} (" in table.replace("changed_", "")


def test_probe_purifier_inference_option_labels_rows_and_builds_the_variants():
    """``--inference``: rows ``NAME`` for plain and ``NAME+VARIANT`` otherwise, each built from
    probe_inference's variants of the checkpoint (dynamic: the same seeded draw for every purifier,
    so that --paired compares purifiers on the same noise)."""
    from lab.probe_purifier import inference_variants, row_label

    assert row_label("shipped", "plain") == "shipped" and row_label("noise", "dynamic_avg4") == "noise+dynamic_avg4"
    x = torch.rand(2, 3, 16, 16)
    table = inference_variants(torch.nn.Identity())
    torch.testing.assert_close(table["plain"](x), x)
    noisy = table["dynamic"](x)
    assert not torch.equal(noisy, x) and (noisy - x).abs().amax() <= 16 / 255 + 1e-6
    torch.testing.assert_close(inference_variants(torch.nn.Identity())["dynamic"](x), noisy)
    louder = inference_variants(torch.nn.Identity(), ["plain", "dynamic@0.2"])["dynamic@0.2"](x)
    assert (louder - x).abs().mean() > (noisy - x).abs().mean() and (louder - x).abs().amax() <= 16 / 255 + 1e-6
    with pytest.raises(ValueError, match="dynamic@SIGMA"):
        inference_variants(torch.nn.Identity(), ["dynamic@loud"])


def test_probe_inference_variants_keep_shape_range_and_their_definitions():
    """The inference-side screen of lab/NOTEBOOK.md: with an identity purifier, plain and
    flip2 give the input back, up2 equals the resampling control, dynamic stays within 16/255 and
    repeats its seeded draw; an uneven purifier (a one-pixel shift) shows flip2 averages two views
    and twice applies it twice; twice_gated passes what the gate leaves and purifies twice what it flags."""
    from lab.probe_inference import variants

    x = torch.rand(2, 3, 32, 40)
    table = variants(torch.nn.Identity())
    for name, f in table.items():
        y = f(x)
        assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1, name
    assert torch.equal(table["plain"](x), x) and torch.allclose(table["flip2"](x), x)
    assert torch.allclose(table["up2"](x), table["resample2"](x))
    dyn = table["dynamic"](x)
    assert 0 < float((dyn - x).abs().max()) <= 16 / 255 + 1e-6 and torch.equal(dyn, table["dynamic"](x))
    shifted = variants(lambda t: torch.roll(t, 1, -1))
    assert torch.allclose(shifted["flip2"](x), (torch.roll(x, 1, -1) + torch.roll(x, -1, -1)) / 2)
    assert torch.equal(shifted["twice"](x), torch.roll(x, 2, -1))  # two passes: the shift twice
    from nrp_lightning.gate import PurificationGate

    gate = PurificationGate(torch.nn.Conv2d(3, 4, 3, padding=1), threshold=1e-3)
    gated = variants(torch.nn.Identity(), gate)
    assert torch.equal(gated["gated"](x), x)  # P(x) = x moves no feature: nothing flagged
    assert torch.equal(variants(lambda t: 1 - t, gate)["gated"](x), 1 - x)  # a big move: flagged
    assert torch.equal(gated["twice_gated"](x), x)
    assert torch.equal(variants(lambda t: torch.roll(t, 1, -1), gate)["twice_gated"](x), torch.roll(x, 2, -1))


def test_probe_detail_oracle_repairs_give_back_what_they_restore():
    """lab/probe_detail.py: with P(x) = x both repairs return x; from a blurred P(x) the
    detail repair restores half of the lost 3x3 detail, and the low-pass repair x's shading."""
    from lab.probe_detail import box_blur, oracle_repairs

    x = torch.rand(2, 3, 24, 24) * 0.5 + 0.25
    for out in oracle_repairs(x, x).values():
        torch.testing.assert_close(out, x)
    blurred = box_blur(x, 3)
    repaired = oracle_repairs(blurred, x)
    lost = (x - box_blur(x, 3)) - (blurred - box_blur(blurred, 3))
    torch.testing.assert_close(repaired["+half detail"], blurred + 0.5 * lost)
    torch.testing.assert_close(box_blur(repaired["+low(x)"], 9), box_blur(x, 9), atol=0.05, rtol=0)


def test_gate_evading_mifgsm_stays_in_budget_and_holds_the_score_down():
    """lab/probe_gate.py --evade: the attack the gate's docs report stays within eps and
    [0, 1], and with the penalty it ends with a lower gate score than plain MI-FGSM."""
    from _tiny import smooth_images, tiny_classifier
    from lab.probe_gate import gate_evading_mifgsm

    from nrp_lightning.attacks.transfer import mifgsm
    from nrp_lightning.gate import PurificationGate
    from nrp_lightning.models.purifier import RRDBPurifier, purify

    torch.manual_seed(0)
    x, source = smooth_images(4, 32), tiny_classifier()
    purifier = RRDBPurifier(8, 1, 4).eval().requires_grad_(False)
    gate = PurificationGate(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()), threshold=1.0)
    plain = mifgsm(eps=16)(x, source(x).argmax(1), source)
    with torch.no_grad():
        gate.threshold = float(gate.score(plain, purify(purifier, plain)).min()) * 0.5  # plain MI-FGSM: all flagged
    evading = gate_evading_mifgsm(x, source, purifier, gate, eps=16, weight=1e4)
    assert (evading - x).abs().max() <= 16 / 255 + 1e-6 and 0 <= float(evading.min()) and float(evading.max()) <= 1
    with torch.no_grad():
        s_plain, s_evading = gate.score(plain, purify(purifier, plain)), gate.score(evading, purify(purifier, evading))
    assert float(s_evading.mean()) < float(s_plain.mean())


def test_probe_gate_keeps_the_sets_crafted_through_a_purifier_apart_per_purifier_file(tmp_path):
    """The gate-evading and through-the-purifier sets depend on the purifier: once they were cached
    under one name for whatever file was shipped, so a newly shipped purifier would have been
    measured on sets crafted through the old one. The cache key is the file's sha256."""
    from lab.probe_gate import purifier_tag

    from nrp_lightning.models.purifier import RRDBPurifier

    paths = [tmp_path / f"{name}.pth" for name in ("a", "b")]
    for path, seed in zip(paths, (0, 1)):
        torch.manual_seed(seed)
        torch.save(RRDBPurifier(8, 1, 4).state_dict(), path)
    copy = tmp_path / "elsewhere" / "a.pth"  # the same bytes shipped under another path
    copy.parent.mkdir()
    copy.write_bytes(paths[0].read_bytes())
    tags = [purifier_tag(p) for p in (*paths, copy)]
    assert tags[0] != tags[1] and tags[0] == tags[2] and len(tags[0]) == 8


def test_probe_residual_bands_add_up_and_sort_by_frequency():
    """lab/probe_residual.py: the three bands sum back to the perturbation exactly; a
    constant perturbation is all low band, a one-pixel checkerboard all high band, and a
    checkerboard of 4-pixel squares is mostly mid band; every floor transformation keeps shape and range."""
    from lab.probe_residual import band_split, transformations

    d = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(sum(band_split(d).values()), d)

    def share(t: torch.Tensor) -> dict[str, float]:
        bands = band_split(t)
        return {k: float(v.pow(2).sum() / t.pow(2).sum()) for k, v in bands.items()}

    assert share(torch.full((1, 3, 32, 32), 0.1))["low"] == pytest.approx(1.0, abs=1e-4)
    idx = torch.arange(32)
    checker = ((idx.view(-1, 1) + idx.view(1, -1)) % 2 * 2 - 1).float().expand(1, 3, 32, 32)
    assert share(checker)["high"] == pytest.approx(1.0, abs=1e-4)
    squares = (((idx.view(-1, 1) // 4) + (idx.view(1, -1) // 4)) % 2 * 2 - 1).float().expand(1, 3, 32, 32)
    assert max(share(squares).items(), key=lambda kv: kv[1])[0] == "mid"
    x = torch.rand(2, 3, 48, 48)
    for name, t in transformations().items():
        y = t(x)
        assert y.shape == x.shape and float(y.min()) >= -1e-6 and float(y.max()) <= 1 + 1e-6, name


def test_probe_purifier_counts_attack_success_on_every_black_box_asked_for():
    """``--black-boxes``: one success column per attack and victim, each against that victim's own
    clean prediction; the first black box keeps the plain ``success_NAME`` column the docs use."""
    from _tiny import smooth_images, tiny_classifier
    from lab.probe_purifier import BLACK_BOX, attack_labels, markdown, probe

    assert attack_labels(["DIM", "SSP"], (BLACK_BOX, "efficientnet_lite1")) == ["DIM", "SSP", "DIM@lite1", "SSP@lite1"]
    x = smooth_images(8, size=32)
    victims = {BLACK_BOX: tiny_classifier(0), "efficientnet_lite1": tiny_classifier(2), "mobilenet_v2": tiny_classifier(1)}
    adv = {"SSP": (x + 0.3 * torch.randn_like(x)).clamp(0, 1)}
    outcomes = {}
    results, _ = probe({"none": lambda b: b}, x, adv, victims, outcomes, (BLACK_BOX, "efficientnet_lite1"))
    for label, v in (("SSP", BLACK_BOX), ("SSP@lite1", "efficientnet_lite1")):
        expected = victims[v](adv["SSP"]).argmax(1) != victims[v](x).argmax(1)
        assert torch.equal(outcomes["none"][f"success_{label}"], expected)
    assert "SSP success, efficientnet_lite1 (%)" in markdown(results, 8, ["SSP", "SSP@lite1"])


def test_probe_purifier_source_option_keeps_its_sets_apart_and_refuses_what_it_cannot_craft(tmp_path, capsys):
    """``--source``: the sets of another source network are cached under their own names (never
    read back as MobileNetV2's), a source that is also a black box is a usage error, and SSP (made
    on MobileNetV2's features only) is refused with another source instead of being mislabelled."""
    import argparse

    from _tiny import smooth_images, tiny_classifier
    from lab.probe_purifier import add_screen_options, adversarial_sets, load_screen

    x = smooth_images(4, size=32)
    default = adversarial_sets(x, tiny_classifier(0), tmp_path, ("MI-FGSM",))
    other = adversarial_sets(x, tiny_classifier(1), tmp_path, ("MI-FGSM",), tag="efficientnet_lite0")
    from lab.probe_purifier import images_tag

    tag = images_tag(x)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"MI-FGSM-4-{tag}.pt", f"MI-FGSM-efficientnet_lite0-4-{tag}.pt"]
    assert not torch.equal(default["MI-FGSM"], other["MI-FGSM"])
    # other photos of the same count get their own sets, never the cached ones of these
    y = smooth_images(4, size=32).flip(-1)
    fresh = adversarial_sets(y, tiny_classifier(0), tmp_path, ("MI-FGSM",))
    assert (tmp_path / f"MI-FGSM-4-{images_tag(y)}.pt").is_file() and images_tag(y) != tag
    assert (fresh["MI-FGSM"] - y).abs().amax() <= 16 / 255 + 1 / 255
    parser = argparse.ArgumentParser()
    add_screen_options(parser)
    for argv, message in ((["--source", "efficientnet_lite1", "--black-boxes", "efficientnet_lite1"], "also a black box"),
                          (["--source", "efficientnet_lite0", "--black-boxes", "efficientnet_lite1"],
                           "SSP is crafted on MobileNetV2's features only")):
        with pytest.raises(SystemExit):
            load_screen(parser, parser.parse_args(argv + ["--photos", str(tmp_path / "none")]))
        assert message in capsys.readouterr().err


def test_page_cases_runs_every_case_and_counts_what_purification_gives_back():
    """lab/page_cases.py: a row per (attack, source, ε), the white-box source marked, and per
    purifier the cases whose purified image carries the clean top-1 again. The identity gives back
    nothing the attack took; a "purifier" that returns the clean photo gives back every case."""
    from _tiny import smooth_images, tiny_classifier
    from lab.page_cases import markdown, run_cases, through_png

    x = through_png(smooth_images(1, size=32)[0])
    victim, other = tiny_classifier(0), tiny_classifier(1)
    labels = [f"class {i}" for i in range(10)]
    purifiers = {"identity": lambda b: b, "oracle": lambda b: x[None]}
    clean, rows = run_cases(x, victim, {"victim": victim, "other": other}, purifiers, labels, eps_list=(32, 8))
    assert clean[0] == labels[int(victim(x[None]).argmax())]
    assert [(r["attack"], r["source"], r["eps"]) for r in rows] == [
        (a, s, e) for a in ("mifgsm", "dim") for s in ("victim", "other") for e in (32, 8)]
    assert all(r["purified"]["oracle"][0] == clean[0] for r in rows)
    assert all(r["purified"]["identity"] == r["attacked"] for r in rows)
    fooled = sum(r["attacked"][0] != clean[0] for r in rows)
    assert fooled > 0  # the white-box attack at 32/255 fools the tiny victim
    table = markdown(clean, rows, "victim")
    assert "| MI-FGSM, victim (white-box) | 32 | ✗ " in table
    assert f"identity: gave back the clean top-1 in 0 of the {fooled} cases" in table
    assert f"oracle: gave back the clean top-1 in {fooled} of the {fooled} cases" in table
