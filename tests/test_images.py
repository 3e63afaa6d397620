import io
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from nrp_lightning.images import (ImageLoadError, OutputMode, list_images, load_image, load_image_with_mode, save_png,
                                  to_uint8)


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def odd_images(tmp_path):
    rgb = Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))
    paths = {
        "gray": _save(rgb.convert("L"), tmp_path / "gray.png"),
        "rgba": _save(rgb.convert("RGBA"), tmp_path / "rgba.png"),
        "palette": _save(rgb.convert("P"), tmp_path / "palette.gif"),
        "cmyk": _save(rgb.convert("CMYK"), tmp_path / "cmyk.jpg"),
        "gray16": _save(Image.fromarray((np.arange(600).reshape(20, 30) * 100).astype(np.uint16)), tmp_path / "g16.png"),
        "tiny": _save(rgb.resize((1, 1)), tmp_path / "tiny.png"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    paths["exif"] = _save(rgb, tmp_path / "exif.jpg", exif=exif)
    return paths


def test_odd_modes_become_rgb_in_unit_range(odd_images):
    for name, path in odd_images.items():
        x = load_image(path)
        assert x.dtype == torch.float32 and x.shape[0] == 3, name
        assert 0 <= x.min() and x.max() <= 1, name
    assert load_image(odd_images["exif"]).shape[1:] == (30, 20)  # EXIF orientation applied
    assert load_image(odd_images["gray16"]).max() > 0.9  # 16-bit range scaled, not clipped to 255
    assert load_image(odd_images["tiny"]).shape == (3, 1, 1)


def test_bad_files_raise_a_clear_error(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    for name, reason in [("empty.jpg", "empty"), ("text.jpg", "not an image"), ("truncated.jpg", "cannot decode"),
                         ("missing.png", "no such file")]:
        with pytest.raises(ImageLoadError, match=reason) as err:
            load_image(tmp_path / name)
        assert name in str(err.value)


def test_png_round_trip_is_exact_and_atomic(tmp_path):
    x = torch.randint(0, 256, (3, 9, 7)).float() / 255
    path = save_png(x, tmp_path / "sub" / "a.png")
    assert torch.equal(load_image(path), x)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]  # no temporary left behind
    assert list_images(tmp_path) == [path]


def test_written_files_get_the_umask_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_png(torch.zeros(3, 4, 4), tmp_path / "a.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # what open() gives; mkstemp alone gives 0600


def _png16_sub_filtered(samples: np.ndarray) -> bytes:
    """A 16-bit PNG of ``(H, W, C)`` uint16 samples made here, not by images.py, with every row in the
    Sub filter (each byte minus the one a pixel before), so that PIL's unfiltering must use the right
    bytes per pixel for the 16 bits to come back."""
    import struct
    import zlib

    height, width, channels = samples.shape
    raw = samples.astype(">u2").reshape(height, -1).view(np.uint8)
    bpp = 2 * channels
    sub = raw.copy()
    sub[:, bpp:] -= raw[:, :-bpp]  # uint8 arithmetic wraps, as the filter does
    rows = np.hstack([np.ones((height, 1), np.uint8), sub])  # filter type 1 (Sub) on every row
    colour_type = {2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))


def _varied_alpha(h: int, w: int) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 37 % 256).astype(np.uint8)  # every level from 0 to 255 appears


@pytest.mark.parametrize("channels", [2, 3, 4], ids=["gray_alpha", "rgb", "rgba"])
def test_16_bit_pngs_are_read_to_the_last_bit(tmp_path, channels):
    samples = np.random.default_rng(channels).integers(0, 65536, (20, 24, channels)).astype(np.uint16)
    (tmp_path / "deep.png").write_bytes(_png16_sub_filtered(samples))
    x, mode = load_image_with_mode(tmp_path / "deep.png")
    colour = np.repeat(samples[..., :1], 3, axis=2) if channels == 2 else samples[..., :3]
    assert np.array_equal((x.permute(1, 2, 0).numpy() * 65535).round(), colour)
    assert mode.bits == 16 and mode.gray == (channels == 2)
    assert (mode.alpha is None) == (channels == 3)
    if mode.alpha is not None:
        assert mode.alpha.dtype == np.uint16 and np.array_equal(mode.alpha, samples[..., -1])
    out = save_png(x, tmp_path / "out.png", mode)  # written back: the same samples
    again, kept = load_image_with_mode(out)
    assert torch.equal(again, x) and kept.bits == 16 and kept.gray == mode.gray
    assert kept.alpha is None if mode.alpha is None else np.array_equal(kept.alpha, mode.alpha)


def test_rgba_keeps_its_alpha_and_its_colours_as_stored(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    alpha = _varied_alpha(20, 24)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    x, mode = load_image_with_mode(tmp_path / "a.png")
    assert np.array_equal(to_uint8(x), rgb)  # not composited on white (load_image's view)
    assert not torch.equal(load_image(tmp_path / "a.png"), x)
    assert mode.bits == 8 and not mode.gray and np.array_equal(mode.alpha, alpha)
    out = Image.open(save_png(1 - x, tmp_path / "out.png", mode))
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], alpha)
    assert np.array_equal(np.asarray(out)[..., :3], 255 - rgb)


def test_alpha_follows_exif_rotation(tmp_path):
    rgba = np.dstack([np.zeros((20, 24, 3), np.uint8), _varied_alpha(20, 24)])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(rgba).save(tmp_path / "r.png", exif=exif)
    x, mode = load_image_with_mode(tmp_path / "r.png")
    assert x.shape == (3, 24, 20) and np.array_equal(mode.alpha, np.rot90(rgba[..., 3], k=-1))


@pytest.mark.parametrize("make, written_as", [
    (lambda rgb: rgb.convert("L"), "L"),
    (lambda rgb: rgb.convert("LA"), "LA"),
    (lambda rgb: Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)), "I;16"),
    (lambda rgb: rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "RGB"),
    (lambda rgb: rgb.convert("CMYK"), "RGB"),
], ids=["gray", "gray_alpha", "gray16", "palette", "cmyk"])
def test_each_mode_is_written_back_as_documented(tmp_path, make, written_as):
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    source = make(rgb)
    if source.mode == "LA":
        source.putalpha(Image.fromarray(_varied_alpha(20, 24)))
    source.save(tmp_path / ("in.tif" if source.mode == "CMYK" else "in.png"))
    x, mode = load_image_with_mode(next(tmp_path.glob("in.*")))
    out = Image.open(save_png(x, tmp_path / "out.png", mode))
    assert out.mode == written_as
    if written_as != "RGB":  # grayscale written back unchanged, to the last bit (and the alpha with it)
        assert np.array_equal(np.asarray(out), np.asarray(source))


def test_palette_transparency_becomes_an_rgba_alpha(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "p.png", transparency=0)
    x, mode = load_image_with_mode(tmp_path / "p.png")
    out = Image.open(save_png(x, tmp_path / "out.png", mode))
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGBA"))
    assert out.mode == "RGBA" and np.array_equal(np.asarray(out), expected)
    assert 0 < (expected[..., 3] == 0).sum() < 256  # some pixels transparent, not all


def test_an_alpha_plane_of_another_size_is_refused(tmp_path):
    mode = OutputMode(alpha=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        save_png(torch.zeros(3, 5, 5), tmp_path / "a.png", mode)
