"""Test setup: offline, CPU, deterministic, and small."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None: they need Debian's chromium and Playwright."""
    import importlib.util
    import shutil

    if shutil.which(CHROMIUM) is None:
        return f"Debian's chromium is not installed ({CHROMIUM} not found): `make browser` installs it (apt, as root)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed: `make install` installs it (the dev extra)"
    return None


CHROMIUM = os.environ.get("NRP_CHROMIUM", "/usr/bin/chromium")  # Debian's; `make browser` installs it


def pytest_collection_modifyitems(config, items):
    skips = {}
    if not torch.cuda.is_available():
        skips["gpu"] = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    if any("browser" in item.keywords for item in items) and (why := browser_missing()):
        skips["browser"] = pytest.mark.skip(reason=why)
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def served():
    """One nrp-serve with the demo page for the whole session (CPU, small limits): its base URL.
    Starting one costs tens of seconds (spawned workers import torch), so tests share it."""
    from nrp_lightning.serve.client import running_server

    args = ["--page", "--accelerator", "cpu", "--max-batch-size", "4", "--batch-timeout", "0.05",
            "--max-pixels", str(SERVED_MAX_PIXELS), "--timeout", "900"]
    with running_server(args) as url:
        yield url


SERVED_MAX_PIXELS = 300_000
