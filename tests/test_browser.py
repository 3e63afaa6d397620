"""The demo page in a real browser: Debian's chromium driven by Playwright (marked ``browser``: skipped,
with the reason, where chromium or Playwright is missing; ``make browser`` installs chromium).

Uploads a photo, attacks it, purifies it, reads back the victim's three top-5 lists and the PSNRs,
downloads the zip of the three PNGs and checks them against the project's own code: the purified PNG
is ``purify_images`` of the attacked one, each PSNR is what the page shows. Saves a screenshot to
``$NRP_TEST_ARTIFACTS`` (default ``outputs/test-artifacts/``), the one in the README.
"""
from __future__ import annotations

import io
import math
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from conftest import CHROMIUM
from nrp_lightning.evaluation.metrics import psnr_per_image
from nrp_lightning.images import decode_image, to_uint8
from nrp_lightning.purify import load_purifier, purify_images

pytestmark = [pytest.mark.browser, pytest.mark.timeout(1800)]
STEP_TIMEOUT_MS = 600_000  # an attack on a 2-core CPU that a training run shares


def artifacts() -> Path:
    folder = Path(os.environ.get("NRP_TEST_ARTIFACTS", "outputs/test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def top5(page, which: str) -> list[str]:
    return page.locator(f"#{which}-top5 li").all_inner_texts()


def test_demo_page_attack_and_purify(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    upload = tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(upload, quality=92)  # 600x400
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(served + "/demo")
            expect(page.locator("#status")).to_contain_text("Photo ready", timeout=STEP_TIMEOUT_MS)  # the example

            page.set_input_files("#upload", str(upload))
            expect(page.locator("#status")).to_contain_text("Photo ready (512×341 px)", timeout=STEP_TIMEOUT_MS)
            page.select_option("#attack", "mifgsm")
            page.select_option("#source", "mobilenet_v2")  # the victim itself: a white-box attack
            page.eval_on_selector("#eps", "e => { e.value = 12; e.dispatchEvent(new Event('input')); }")  # the slider
            expect(page.locator("#eps-value")).to_have_text("12")
            page.click("#run-attack")
            expect(page.locator("#status")).to_contain_text("Attacked", timeout=STEP_TIMEOUT_MS)
            page.click("#run-purify")
            expect(page.locator("#status")).to_contain_text("Done", timeout=STEP_TIMEOUT_MS)

            predictions = {which: top5(page, which) for which in ("clean", "attacked", "purified")}
            shown_psnr = {which: page.inner_text(f"#psnr-{which}") for which in ("attacked", "purified")}
            for which in predictions:
                assert len(predictions[which]) == 5, predictions
                width = page.eval_on_selector(f"#{which}", "img => img.naturalWidth")
                assert width == 512, f"{which} image not shown ({width} px wide)"
            assert predictions["attacked"][0] != predictions["clean"][0], predictions  # the victim is fooled
            assert "MI-FGSM, eps 12/255" in page.inner_text("#attack-about")
            page.screenshot(path=str(artifacts() / "demo_page.png"), full_page=True)

            with page.expect_download() as download:
                page.click("#download")
            archive = tmp_path / "nrp-demo.zip"
            download.value.save_as(archive)
            assert not errors, errors
        finally:
            browser.close()

    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        images = {name.removesuffix(".png"): decode_image(z.read(name)) for name in z.namelist()}
    assert sorted(images) == ["attacked", "clean", "purified"]
    assert all(x.shape == (3, 341, 512) for x in images.values())
    clean, attacked = images["clean"], images["attacked"]
    assert 0 < (attacked - clean).abs().max() <= 12 / 255 + 1e-6
    expected = to_uint8(purify_images(load_purifier(), attacked[None])[0])
    assert np.abs(to_uint8(images["purified"]).astype(int) - expected.astype(int)).max() <= 1
    for which, text in shown_psnr.items():
        value = float(psnr_per_image(images[which][None], clean[None])[0])
        assert math.isclose(float(text.split()[0]), value, abs_tol=0.01), (which, text, value)
