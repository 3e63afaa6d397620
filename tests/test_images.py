import io
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from nrp_lightning.images import ImageLoadError, list_images, load_image, save_png


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
