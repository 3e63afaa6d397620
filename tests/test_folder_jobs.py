"""run_jobs: outputs, failures and the overlap of file work with the computation."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from nrp_lightning import folder_jobs
from nrp_lightning.folder_jobs import plan_jobs, run_jobs


def _write(path, size, value):
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    arr[0, 0] = (value + 7) % 256  # not flat, so each image is its own
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        _write(src / f"a{i}.png", (20, 16), 10 * i)
    for i in range(3):
        _write(src / f"b{i}.png", (12, 24), 100 + 10 * i)
    (src / "broken.png").write_bytes(b"not an image")
    return src


def _read(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_outputs_counts_and_failures_over_several_batches(tmp_path, folder):
    jobs = plan_jobs(folder, tmp_path / "out")
    summary = run_jobs(jobs, lambda x: 1.0 - x, batch_size=2, progress=False)
    assert summary.done == 8 and summary.skipped == 0
    assert list(summary.failed) == [folder / "broken.png"]
    for job in jobs:
        if job.source.name != "broken.png":
            assert np.array_equal(_read(job.target), 255 - _read(job.source)), job.source


def test_a_failing_image_and_an_unwritable_target_do_not_stop_the_others(tmp_path, folder):
    jobs = plan_jobs(folder, tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a1.png").mkdir()  # a folder where the PNG should go: the write fails

    def fn(x):
        if (x[:, 0, 0, 1] * 255).round().eq(100).any():  # b0 fails, alone or in its batch
            raise RuntimeError("boom\nsecond line")
        return x

    summary = run_jobs(jobs, fn, batch_size=3, overwrite=True, progress=False)
    failed = {path.name: reason for path, reason in summary.failed.items()}
    assert set(failed) == {"broken.png", "a1.png", "b0.png"}
    assert failed["b0.png"] == "processing failed (RuntimeError: boom)"
    assert failed["a1.png"].startswith("cannot write")
    assert summary.done == 6


def test_the_next_batch_is_read_while_fn_computes(tmp_path, folder, monkeypatch):
    jobs = [job for job in plan_jobs(folder, tmp_path / "out") if job.source.name.startswith("a")]
    second_batch_read = threading.Event()
    real_load = folder_jobs.load_image_with_mode

    def load_image_with_mode(path):
        if path.name in {"a2.png", "a3.png"}:
            second_batch_read.set()
        return real_load(path)

    monkeypatch.setattr(folder_jobs, "load_image_with_mode", load_image_with_mode)
    overlapped = []

    def fn(x):
        if not overlapped:  # the first batch: the second one must be read meanwhile
            overlapped.append(second_batch_read.wait(timeout=10))
        return x

    summary = run_jobs(jobs, fn, batch_size=2, progress=False)
    assert overlapped == [True] and summary.done == 5


def test_pngs_are_written_with_the_fast_zlib_level(tmp_path):
    from nrp_lightning.images import PNG_COMPRESS_LEVEL, png_bytes

    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    data = png_bytes(x)
    assert PNG_COMPRESS_LEVEL == 1
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert np.array_equal(_read(path), (x.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
