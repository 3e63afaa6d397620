"""nrp-purify and nrp-attack end to end: bad inputs, file safety, resume, exit codes, help."""
from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from nrp_lightning.cli_purify import attack_main, purify_main
from nrp_lightning.images import load_image
from nrp_lightning.models.purifier import RRDBPurifier
from nrp_lightning.purify import load_purifier, purify_images

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


ALPHA = (np.arange(20 * 24).reshape(20, 24) * 37 % 256).astype(np.uint8)  # every level from 0 to 255


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(RRDBPurifier(8, 1, 4).state_dict(), path)
    return path


@pytest.fixture()
def photos(tmp_path):
    """A folder with good and bad images, as a user's camera folder might have."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(32, 40, 1)).save(root / "a.jpg")
    Image.fromarray(_rgb(32, 40, 2)).save(root / "a.png")  # same stem as a.jpg
    Image.fromarray(_rgb(32, 40, 3)).save(root / "sub" / "b.png")  # same size: batched with the two above
    Image.fromarray(_rgb(20, 24, 4)[..., 0]).save(root / "sub" / "gray.png")
    Image.fromarray(np.dstack([_rgb(20, 24, 5), ALPHA])).save(root / "rgba.png")  # 24x20, alpha varied
    palette = Image.fromarray(_rgb(16, 16, 6)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(root / "palette.png", transparency=0)
    Image.fromarray((np.arange(24 * 20, dtype=np.uint16).reshape(20, 24) * 100)).save(root / "deep16.png")
    Image.fromarray(_rgb(24, 20, 7)).convert("CMYK").save(root / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: 24x40 stored -> 40x24 shown
    Image.fromarray(_rgb(24, 40, 8)).save(root / "rotated.jpg", exif=exif)
    Image.fromarray(_rgb(1, 1, 9)).save(root / "one.png")
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64, 10)).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is text, not a JPEG")
    (root / "readme.txt").write_text("ignored: not an image extension")
    return root


GOOD = {"a.jpg.png", "a.png.png", "sub/b.png", "sub/gray.png", "rgba.png", "palette.png", "deep16.png", "cmyk.png",
        "rotated.png", "one.png"}
BAD = {"truncated.jpg", "empty.png", "notes.jpg"}


def _outputs(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_purify_folder_with_bad_inputs(tmp_path, photos, checkpoint, capsys):
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    # --fp32: the comparison below is with fp32 purification (bf16 is the default where the CPU has it)
    assert purify_main([str(photos), str(out), "--checkpoint", str(checkpoint), "--batch-size", "3", "--no-progress",
                        "--fp32"]) == 1
    err = capsys.readouterr().err
    assert "done: 10, skipped (output exists): 0, failed: 3" in err
    assert "truncated.jpg: cannot decode" in err and "empty.png: empty file" in err
    assert "notes.jpg: not an image PIL can read" in err
    assert _outputs(out) == GOOD  # PNGs only, structure kept, no temporary files left
    assert {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()} == before  # inputs untouched
    assert Image.open(out / "rotated.png").size == (24, 40)  # EXIF rotation applied (W x H)
    assert Image.open(out / "one.png").size == (1, 1)
    # the written PNG is the purified image, rounded to 8 bits
    expected = purify_images(load_purifier(checkpoint), load_image(photos / "sub" / "b.png")[None])[0]
    assert (load_image(out / "sub" / "b.png") - expected).abs().max() <= 0.5 / 255 + 1e-6
    _assert_input_forms_kept(photos, out)


def _assert_input_forms_kept(photos, out):
    """The documented output of each input form (nrp-purify --help, docs/protect.md)."""
    rgba = Image.open(out / "rgba.png")
    assert rgba.mode == "RGBA" and np.array_equal(np.asarray(rgba)[..., 3], ALPHA)  # alpha untouched
    assert {name: Image.open(out / name).mode for name in ("sub/gray.png", "deep16.png", "palette.png", "cmyk.png")} \
        == {"sub/gray.png": "L", "deep16.png": "I;16", "palette.png": "RGBA", "cmyk.png": "RGB"}
    source_alpha = np.asarray(Image.open(photos / "palette.png").convert("RGBA"))[..., 3]
    assert np.array_equal(np.asarray(Image.open(out / "palette.png"))[..., 3], source_alpha)


def test_purify_skips_existing_resumes_and_overwrites(tmp_path, photos, checkpoint, capsys):
    out = tmp_path / "out"
    args = [str(photos), str(out), "--checkpoint", str(checkpoint), "--no-progress"]
    purify_main(args)
    (out / "a.png.png").unlink()  # as if killed before this one
    stamp = (out / "sub" / "b.png").stat().st_mtime_ns
    capsys.readouterr()
    assert purify_main(args) == 1
    assert "done: 1, skipped (output exists): 9, failed: 3" in capsys.readouterr().err
    assert (out / "sub" / "b.png").stat().st_mtime_ns == stamp
    assert purify_main(args + ["--overwrite"]) == 1
    assert "done: 10, skipped (output exists): 0" in capsys.readouterr().err


def test_purify_single_file_dynamic_is_seeded(tmp_path, photos, checkpoint, capsys):
    source = photos / "sub" / "b.png"
    outs = []
    for name, seed in (("x.png", "1"), ("y.png", "1"), ("z.png", "2")):
        assert purify_main([str(source), str(tmp_path / name), "--checkpoint", str(checkpoint), "--dynamic",
                            "--seed", seed, "--no-progress"]) == 0
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] != outs[2]
    assert purify_main([str(source), str(tmp_path / "d"), "--checkpoint", str(checkpoint), "--no-progress"]) == 0
    assert (tmp_path / "d" / "b.png").is_file()


def test_purified_rgba_keeps_its_alpha_and_purifies_the_colours_as_stored(tmp_path, photos, checkpoint):
    out = tmp_path / "rgba.png"
    assert purify_main([str(photos / "rgba.png"), str(out), "--checkpoint", str(checkpoint), "--no-progress", "--fp32"]) == 0
    written = np.array(Image.open(out))
    assert written.shape == (20, 24, 4) and np.array_equal(written[..., 3], ALPHA)
    colours = torch.from_numpy(_rgb(20, 24, 5)).permute(2, 0, 1).float() / 255  # not composited on white
    expected = purify_images(load_purifier(checkpoint), colours[None])[0]
    assert (torch.from_numpy(written[..., :3]).permute(2, 0, 1) / 255 - expected).abs().max() <= 0.5 / 255 + 1e-6


def test_grayscale_and_16_bit_come_back_as_they_went_in(tmp_path, checkpoint):
    from nrp_lightning.images import OutputMode, load_image_with_mode, save_png

    src = tmp_path / "in"
    gray = _rgb(20, 24, 11)[..., 0]
    save_png(torch.from_numpy(gray).float().div(255).expand(3, -1, -1), src / "gray.png", OutputMode(gray=True))
    alpha16 = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 137)
    save_png(torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0)), src / "rgba16.png",
             OutputMode(bits=16, alpha=alpha16))
    assert purify_main([str(src), str(tmp_path / "out"), "--checkpoint", str(checkpoint), "--no-progress", "--fp32"]) == 0
    written = Image.open(tmp_path / "out" / "gray.png")
    expected = purify_images(load_purifier(checkpoint), load_image(src / "gray.png")[None])[0]
    luma = (torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1) * expected).sum(0)
    assert written.mode == "L" and (torch.from_numpy(np.array(written)) / 255 - luma).abs().max() <= 0.5 / 255 + 1e-6
    _, mode = load_image_with_mode(tmp_path / "out" / "rgba16.png")
    assert mode.bits == 16 and not mode.gray and np.array_equal(mode.alpha, alpha16)


def test_a_tiled_photo_shows_a_bar_of_tiles_and_the_same_output(tmp_path, photos, checkpoint, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(_rgb(100, 120, 12)).save(big)
    options = ["--checkpoint", str(checkpoint), "--max-memory", "5M"]  # 84-85 px tiles: 2x2 of them
    assert purify_main([str(big), str(tmp_path / "bar.png"), *options]) == 0
    assert re.search(r"big\.png: tiles 0/4 .*big\.png: tiles [1-4]/4", capsys.readouterr().err, re.S)
    assert purify_main([str(big), str(tmp_path / "quiet.png"), *options, "--no-progress"]) == 0
    assert "tiles" not in capsys.readouterr().err
    assert (tmp_path / "bar.png").read_bytes() == (tmp_path / "quiet.png").read_bytes()
    assert purify_main([str(photos / "sub" / "b.png"), str(tmp_path / "small.png"), *options]) == 0
    assert "tiles" not in capsys.readouterr().err  # fits the budget whole: no bar of tiles


@pytest.mark.parametrize("output, message", [
    ("in", "is the input folder or inside it"),
    ("in/sub/out", "is the input folder or inside it"),
])
def test_purify_refuses_output_inside_input(tmp_path, photos, checkpoint, capsys, output, message):
    with pytest.raises(SystemExit) as info:
        purify_main([str(photos), str(tmp_path / output), "--checkpoint", str(checkpoint)])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_purify_refuses_overwriting_the_input_file(tmp_path, photos, checkpoint, capsys):
    with pytest.raises(SystemExit) as info:
        purify_main([str(photos / "a.png"), str(photos / "a.png"), "--checkpoint", str(checkpoint)])
    assert info.value.code == 2 and "is the input itself" in capsys.readouterr().err


def test_purify_bad_checkpoint_is_a_usage_error(tmp_path, photos, capsys):
    (tmp_path / "bad.pth").write_text("no")
    with pytest.raises(SystemExit) as info:
        purify_main([str(photos), str(tmp_path / "out"), "--checkpoint", str(tmp_path / "bad.pth")])
    assert info.value.code == 2 and "not a PyTorch file" in capsys.readouterr().err


def test_purify_export_command(tmp_path, checkpoint, capsys):
    assert purify_main(["export", str(checkpoint), str(tmp_path / "p.pt")]) == 0
    assert "exported rrdb purifier (nf=8 nb=1 gc=4)" in capsys.readouterr().err
    x = torch.rand(1, 3, 20, 20)
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "p.pt"))(x),
                               purify_images(load_purifier(checkpoint), x), atol=1e-5, rtol=0)


def test_bf16_purify_and_ssp_stay_within_bf16_rounding_of_fp32(tmp_path, photos, checkpoint, capsys):
    """--bf16 (autocast; CPU autocast here, CUDA on a GPU) writes the same files as --fp32 up to bf16
    rounding, and the start line says which ran (both channels_last)."""
    source = photos / "sub" / "b.png"
    said = {"--fp32": "channels_last fp32;", "--bf16": "channels_last bf16 autocast;"}
    for flag in said:
        assert purify_main([str(source), str(tmp_path / f"p{flag}.png"), "--checkpoint", str(checkpoint),
                            "--no-progress", flag]) == 0
        assert said[flag] in capsys.readouterr().err
    fp32, bf16 = load_image(tmp_path / "p--fp32.png"), load_image(tmp_path / "p--bf16.png")
    assert 0 < (fp32 - bf16).abs().max() <= 8 / 255  # bf16 has 8 bits of mantissa: a few levels at most
    for flag in said:
        assert attack_main(["ssp", str(source), str(tmp_path / f"a{flag}.png"), "--backbone", "mobilenet_v2",
                            "--layer", "4", "--eps", "8", "--steps", "3", "--no-progress", flag]) == 0
        assert said[flag] in capsys.readouterr().err
    clean, adv = load_image(source), load_image(tmp_path / "a--bf16.png")
    assert 4 / 255 < (adv - clean).abs().max() <= 8 / 255 + 0.5 / 255


def test_the_default_precision_follows_the_hardware_and_the_flags_exclude_each_other(tmp_path, photos, checkpoint,
                                                                                      capsys):
    from nrp_lightning import fast_paths

    source = photos / "sub" / "b.png"
    assert purify_main([str(source), str(tmp_path / "p.png"), "--checkpoint", str(checkpoint), "--no-progress"]) == 0
    expected = "bf16 autocast;" if fast_paths.native_bf16("cpu") else "channels_last fp32;"
    assert expected in capsys.readouterr().err
    with pytest.raises(SystemExit):
        purify_main([str(source), str(tmp_path / "q.png"), "--bf16", "--fp32"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_attack_ssp_folder_offline_mobilenet(tmp_path, photos, capsys, schedule):
    out = tmp_path / "adv"
    code = attack_main(["ssp", str(photos), str(out), "--backbone", "mobilenet_v2", "--layer", "4", "--eps", "8",
                        "--steps", "3", "--schedule", schedule, "--batch-size", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "done: 10, skipped (output exists): 0, failed: 3" in err
    assert f"3 {schedule} steps of 2.55/255" in err
    clean, adv = load_image(photos / "sub" / "b.png"), load_image(out / "sub" / "b.png")
    linf = (adv - clean).abs().max().item()
    assert 4 / 255 < linf <= 8 / 255 + 0.5 / 255  # inside the budget (plus 8-bit rounding), and moved


def test_attack_vgg16_offline_error_is_clear(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached vgg16 file
    monkeypatch.setattr("nrp_lightning.weights.torch.hub.load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    with pytest.raises(SystemExit) as info:
        attack_main(["ssp", str(photos), str(tmp_path / "adv"), "--backbone", "vgg16"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "no ImageNet weights for vgg16" in err and "--backbone mobilenet_v2" in err


def test_attack_transfer_folder_targeted_one_png_per_photo_in_budget(tmp_path, photos, capsys):
    out = tmp_path / "adv"
    argv = ["mifgsm", str(photos), str(out), "--source", "mobilenet_v2", "--eps", "8", "--steps", "2", "--target",
            "919", "--batch-size", "4", "--no-progress"]
    assert attack_main(argv) == 1
    err = capsys.readouterr().err
    assert "MI-FGSM, targeted at class 919, on mobilenet_v2, eps 8/255, 2 steps" in err
    from nrp_lightning import fast_paths  # MobileNetV2 has depthwise convolutions: bf16 by default only with AMX
    assert ("bf16 autocast;" if "amx_bf16" in fast_paths.cpu_flags() else "channels_last fp32;") in err
    assert "done: 10, skipped (output exists): 0, failed: 3" in err
    assert _outputs(out) == GOOD
    clean, adv = load_image(photos / "sub" / "b.png"), load_image(out / "sub" / "b.png")
    assert 4 / 255 < (adv - clean).abs().max().item() <= 8 / 255 + 0.5 / 255
    _assert_input_forms_kept(photos, out)  # the one image writer: outputs as nrp-purify's
    assert attack_main(argv) == 1 and "done: 0, skipped (output exists): 10, failed: 3" in capsys.readouterr().err


@pytest.fixture()
def real_photos(tmp_path):
    """Four of the embedded photos as 96 px PNGs, two in a subfolder."""
    from nrp_lightning.eval_data import embedded
    from nrp_lightning.images import save_png

    images = embedded(size=96, crops=1, names=["astronaut", "chelsea", "coffee", "rocket"]).images
    root = tmp_path / "real"
    for name, x in zip(["astronaut.png", "chelsea.png", "sub/coffee.png", "sub/rocket.png"], images):
        save_png(x, root / name)
    return root


def test_attack_targets_csv_gives_each_photo_its_own_target_class(tmp_path, real_photos, capsys):
    from nrp_lightning.models.classifiers import load_classifier

    wanted = {"astronaut.png": 919, "chelsea.png": 1, "sub/coffee.png": 508, "sub/rocket.png": 919}
    csv_file = tmp_path / "targets.csv"
    csv_file.write_text("path,target\n" + "".join(f"{k},{v}\n" for k, v in wanted.items()))
    out = tmp_path / "adv"
    assert attack_main(["mifgsm", str(real_photos), str(out), "--source", "mobilenet_v2", "--eps", "16",
                        "--targets", str(csv_file), "--batch-size", "4", "--no-progress"]) == 0
    assert f"targeted, a class per image from {csv_file}" in capsys.readouterr().err
    model = load_classifier("mobilenet_v2").eval()
    with torch.no_grad():
        predicted = {name: model(load_image(out / name)[None]).argmax(1).item() for name in wanted}
    assert predicted == wanted


@pytest.mark.parametrize("rows, message", [
    ("path,target\nastronaut.png,919\n", "no row for 3 input image(s): chelsea.png, sub/coffee.png, sub/rocket.png"),
    ("name,class\nastronaut.png,919\n", "needs a header with the columns path and target"),
    ("path,target\nastronaut.png,1000\n", "line 2: target must be 0 to 999, got 1000"),
    ("path,target\nastronaut.png,cat\n", "line 2: target 'cat' is not a class index"),
])
def test_attack_targets_csv_errors_are_clear_and_write_nothing(tmp_path, real_photos, capsys, rows, message):
    csv_file = tmp_path / "targets.csv"
    csv_file.write_text(rows)
    with pytest.raises(SystemExit) as info:
        attack_main(["fgsm", str(real_photos), str(tmp_path / "adv"), "--source", "mobilenet_v2", "--targets",
                     str(csv_file)])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "adv").exists()


def test_attack_target_and_targets_exclude_each_other(tmp_path, real_photos, capsys):
    with pytest.raises(SystemExit) as info:
        attack_main(["fgsm", str(real_photos), str(tmp_path / "adv"), "--source", "mobilenet_v2", "--target", "1",
                     "--targets", "t.csv"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_attack_through_purifier_backpropagates_through_it(tmp_path, photos, checkpoint, capsys):
    photo, outputs = photos / "sub" / "b.png", {}
    for name, extra in (("plain", []), ("through", ["--through-purifier", str(checkpoint)])):
        code = attack_main(["fgsm", str(photo), str(tmp_path / f"{name}.png"), "--source", "mobilenet_v2", "--eps",
                            "8", "--no-progress", *extra])
        assert code == 0
        outputs[name] = load_image(tmp_path / f"{name}.png")
    assert "through rrdb purifier (nf=8 nb=1 gc=4)" in capsys.readouterr().err
    for adv in outputs.values():
        assert (adv - load_image(photo)).abs().max().item() <= 8 / 255 + 0.5 / 255
    assert not torch.equal(outputs["plain"], outputs["through"])


@pytest.mark.parametrize("extra, message", [
    (["--source", "mobilenet_v2", "--target", "1000"], "ImageNet class index, 0 to 999"),
    (["--source", "no_such_model_anywhere"], "could not build timm model"),
    (["--source", "mobilenet_v2", "--through-purifier", "MISSING.pth"], "MISSING.pth"),
])
def test_attack_transfer_usage_errors(tmp_path, photos, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        attack_main(["ifgsm", str(photos), str(tmp_path / "adv"), *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "adv").exists()


@pytest.mark.parametrize("main, argv, words", [
    (purify_main, ["--help"], ["--checkpoint", "--dynamic", "--max-memory", "Exit code",
                               "Alpha: copied through bit for bit into an RGBA", "written back as grayscale",
                               "16-bit PNGs give 16-bit PNGs", "CMYK becomes RGB",
                               "nrp_cpu.pth, trained by `python train.py experiment=nrp_cpu attack=classifier` "
                               "(DIM adversaries of MobileNetV2 as training inputs)"]),
    (purify_main, ["export", "--help"], ["opset 18", "TorchScript", "nrp-purify export nrp_cpu.onnx",
                                         "outputs/<run>/purifier.pth"]),
    (attack_main, ["--help"], ["ssp", "pixel units", "fgsm", "rfgsm", "ifgsm", "mifgsm", "dim"]),
    (attack_main, ["mifgsm", "--help"], ["--source", "efficientnet_lite0", "timm:NAME", "--eps", "--steps", "--ti",
                                         "--target CLASS", "--through-purifier CKPT", "bypass_nrp.py"]),
    (attack_main, ["dim", "--help"], ["--seed", "--steps", "probability 0.5"]),
    (attack_main, ["ssp", "--help"], ["--eps", "--step-size", "--schedule", "--backbone", "timm:NAME", "--layer"]),
])
def test_help(main, argv, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    text = " ".join(capsys.readouterr().out.split())  # help wraps lines where the terminal is narrow
    assert info.value.code == 0 and [w for w in words if w not in text] == []


def test_export_help_names_no_checkpoint_a_new_user_lacks(capsys):
    with pytest.raises(SystemExit):
        purify_main(["export", "--help"])
    assert "NRP.pth" not in capsys.readouterr().out


def test_options_an_attack_does_not_use_are_not_offered(capsys):
    with pytest.raises(SystemExit):
        attack_main(["fgsm", "--help"])
    text = capsys.readouterr().out
    assert "--steps" not in text and "--seed" not in text and "--max-memory" not in text
