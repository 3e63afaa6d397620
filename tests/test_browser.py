"""The demo page in a real browser: Debian's chromium driven by Playwright (marked ``browser``: skipped,
with the reason, where chromium or Playwright is missing; ``make browser`` installs chromium).

Runs the page's default case as a visitor would (the example photo, press Attack, press Purify): a
transfer attack that fools the victim and a purification that gives its top-1 back, coloured as the
legend says. Reads back the three top-5 lists and the PSNRs, downloads the zip of the three PNGs and
checks them against the project's own code: the purified PNG is ``purify_images`` of the attacked
one, each PSNR is what the page shows. Then an uploaded photo is scaled, and the white-box case is
one click away. Saves a screenshot of the default case to ``$NRP_TEST_ARTIFACTS`` (default
``outputs/test-artifacts/``), the one in docs/serve.md and the README.
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


def top1(page, which: str) -> tuple[int, str]:
    """The victim's top-1 class on the ``which`` column, and its colour class (``same`` or ``changed``)."""
    first = page.locator(f"#{which}-top5 li").first
    return int(first.get_attribute("data-cls")), first.get_attribute("class") or ""


def test_demo_page_default_case_and_white_box(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from nrp_lightning.serve.apis import PAGE_EPS, page_source

    upload = tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(upload, quality=92)  # 600x400
    source = page_source("mobilenet_v2")  # the victim of the session's server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(served + "/demo")
            expect(page.locator("#status")).to_contain_text("Photo ready (451×300 px)", timeout=STEP_TIMEOUT_MS)
            # what the page opens on: a transfer attack, the legend, the white-box case a click away
            assert page.input_value("#source") == source and page.input_value("#attack") == "mifgsm"
            expect(page.locator("#eps-value")).to_have_text(str(PAGE_EPS))
            expect(page.locator("#threat-model")).to_have_text(
                f"Transfer attack: crafted on {source}, shown to the victim mobilenet_v2.")
            legend = page.inner_text("#legend")
            assert "green = the victim's top-1 is still the clean photo's" in legend and "red = it differs" in legend
            expect(page.locator("#white-box")).to_have_text("White-box case: attack the victim itself")
            assert "computed its perturbation on the victim itself" in page.inner_text("#white-box-about")

            page.click("#run-attack")
            expect(page.locator("#status")).to_contain_text("Attacked", timeout=STEP_TIMEOUT_MS)
            page.click("#run-purify")
            expect(page.locator("#status")).to_contain_text("Done", timeout=STEP_TIMEOUT_MS)

            predictions = {which: top5(page, which) for which in ("clean", "attacked", "purified")}
            shown_psnr = {which: page.inner_text(f"#psnr-{which}") for which in ("attacked", "purified")}
            for which in predictions:
                assert len(predictions[which]) == 5, predictions
                width = page.eval_on_selector(f"#{which}", "img => img.naturalWidth")
                assert width == 451, f"{which} image not shown ({width} px wide)"
            clean, attacked, purified = (top1(page, which) for which in ("clean", "attacked", "purified"))
            assert attacked == (attacked[0], "changed") and attacked[0] != clean[0], predictions  # fooled, red
            assert purified == (clean[0], "same"), predictions  # the purifier gives the top-1 back, green
            about = page.inner_text("#attack-about")
            assert f"MI-FGSM, eps {PAGE_EPS}/255, 10 steps, on {source} (transfer)" in about, about
            page.screenshot(path=str(artifacts() / "demo_page.png"), full_page=True)

            with page.expect_download() as download:
                page.click("#download")
            archive = tmp_path / "nrp-demo.zip"
            download.value.save_as(archive)

            page.set_input_files("#upload", str(upload))  # scaled in the page to 512 px a side
            expect(page.locator("#status")).to_contain_text("Photo ready (512×341 px)", timeout=STEP_TIMEOUT_MS)
            page.click("#white-box")  # one click: source = victim, and the attack runs
            expect(page.locator("#status")).to_contain_text("Attacked", timeout=STEP_TIMEOUT_MS)
            expect(page.locator("#threat-model")).to_have_text("White-box attack: crafted on the victim (mobilenet_v2) itself.")
            assert "on mobilenet_v2 (white-box)" in page.inner_text("#attack-about")
            assert top1(page, "attacked")[0] != top1(page, "clean")[0], top5(page, "attacked")
            expect(page.locator("#white-box")).to_have_text(f"Back to the transfer case: attack from {source}")
            assert not errors, errors
        finally:
            browser.close()

    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        images = {name.removesuffix(".png"): decode_image(z.read(name)) for name in z.namelist()}
    assert sorted(images) == ["attacked", "clean", "purified"]
    assert all(x.shape == (3, 300, 451) for x in images.values())
    clean, attacked = images["clean"], images["attacked"]
    assert 0 < (attacked - clean).abs().max() <= PAGE_EPS / 255 + 1e-6
    expected = to_uint8(purify_images(load_purifier(), attacked[None])[0])
    assert np.abs(to_uint8(images["purified"]).astype(int) - expected.astype(int)).max() <= 1
    for which, text in shown_psnr.items():
        value = float(psnr_per_image(images[which][None], clean[None])[0])
        assert math.isclose(float(text.split()[0]), value, abs_tol=0.01), (which, text, value)
