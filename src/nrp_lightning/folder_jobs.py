"""Image folder in, PNG folder out, safely: the shared core of ``nrp-purify`` and ``nrp-attack``.

Rules: inputs are never modified (OUTPUT may not be INPUT nor lie inside it, and no output path
is an input path); each output is written atomically (``images.save_png``); an existing output is
skipped unless ``overwrite``, which also makes an interrupted run resume where it stopped; a file
that cannot be read or processed is reported with its reason while the others go on. Images of
equal size are batched together. ``fn`` sees RGB; each output is written in its input's form
(``images.load_image_with_mode``): alpha copied through, grayscale kept, 16-bit PNGs as 16-bit.
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm import tqdm

from nrp_lightning.images import (IMAGE_EXTENSIONS, ImageLoadError, OutputMode, list_images,
                                  load_image_with_mode, save_png)


# A batch of (3, H, W) images in [0, 1], all of one size -> as many (3, H, W) images in [0, 1]. With
# run_jobs(..., pass_sources=True) it also gets the batch's input paths: fn(images, sources).
BatchFn = Callable[..., torch.Tensor]
EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
IO_THREADS = 4  # threads of run_jobs that decode inputs and encode PNGs beside the computation


class UsageError(ValueError):
    """The command line asks for something unsafe or impossible (exit code 2)."""


@dataclass(frozen=True)
class Job:
    """One input image and the PNG it becomes."""

    source: Path
    target: Path


@dataclass
class Summary:
    """What a run did: counts and, per failed file, the reason."""

    done: int = 0
    skipped: int = 0
    failed: dict[Path, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def report(self) -> str:
        lines = [f"done: {self.done}, skipped (output exists): {self.skipped}, failed: {len(self.failed)}"]
        lines += [f"  FAILED {path}: {reason}" for path, reason in self.failed.items()]
        return "\n".join(lines)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def plan_jobs(input_path: str | os.PathLike, output_path: str | os.PathLike) -> list[Job]:
    """Jobs for a file or a folder (recursive, structure kept, every output a ``.png``).

    A single file goes to OUTPUT if it ends in ``.png``, else to ``OUTPUT/<stem>.png``. Two inputs
    that would share a name (``a.jpg`` and ``a.png``) keep their extension: ``a.jpg.png``, ``a.png.png``.
    Raises ``UsageError`` for a missing input or an output that could touch an input.
    """
    source, target = Path(input_path).resolve(), Path(output_path).resolve()
    if not source.exists():
        raise UsageError(f"input {input_path} does not exist")
    if source.is_file():
        if source.suffix.lower() not in IMAGE_EXTENSIONS:
            raise UsageError(f"input {input_path} does not have an image extension ({', '.join(IMAGE_EXTENSIONS)})")
        out = target if target.suffix.lower() == ".png" else target / f"{source.stem}.png"
        if out == source:
            raise UsageError(f"output {out} is the input itself; choose another output path")
        return [Job(source, out)]
    if _is_within(target, source):
        raise UsageError(f"output {output_path} is the input folder or inside it; inputs are never modified "
                         "and outputs must not be picked up as inputs: choose an output outside the input")
    if target.is_file():
        raise UsageError(f"output {output_path} is a file; give a folder for a folder input")
    sources = list_images(source)
    by_stem: dict[Path, list[Path]] = defaultdict(list)
    for path in sources:
        by_stem[path.relative_to(source).with_suffix("")].append(path)
    jobs = []
    for stem, paths in by_stem.items():
        for path in paths:
            name = f"{path.name}.png" if len(paths) > 1 else f"{stem.name}.png"
            jobs.append(Job(path, target / stem.parent / name))
    return sorted(jobs, key=lambda job: job.source)


def header_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` after EXIF rotation, from the header only; ``None`` if unreadable."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(EXIF_ORIENTATION) in SWAPS_SIDES:
                width, height = height, width
            return height, width
    except Exception:  # reported properly when the file is loaded
        return None


def batches_by_size(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Jobs grouped into batches of at most ``batch_size`` images of one size (header sizes)."""
    groups: dict[object, list[Job]] = defaultdict(list)
    for job in jobs:
        groups[header_size(job.source) or ("unknown", job.source)].append(job)
    return [group[i:i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def run_jobs(jobs: list[Job], fn: BatchFn, batch_size: int = 1, overwrite: bool = False,
             desc: str = "images", progress: bool = True, pass_sources: bool = False) -> Summary:
    """Run ``fn`` over the jobs in equal-size batches, writing PNGs; never raises for one bad file.
    ``pass_sources``: call ``fn(images, sources)`` with the batch's input paths (per-image settings).

    Decoding and PNG encoding run in ``IO_THREADS`` background threads (PIL releases the GIL), so
    the next batch is read and the last one written while ``fn`` computes: on a GPU the device no
    longer waits for the CPU's file work. Outputs still appear atomically, and an interrupt waits
    for the writes under way."""
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    summary = Summary()
    todo = []
    for job in jobs:
        if job.target.exists() and not overwrite:
            summary.skipped += 1
        else:
            todo.append(job)
    batches = batches_by_size(todo, batch_size)
    writes: deque[tuple[Job, Future]] = deque()
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="nrp-io") as pool, \
            tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        upcoming = pool.submit(_load, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            loaded, failures = upcoming.result()
            if i + 1 < len(batches):
                upcoming = pool.submit(_load, batches[i + 1])
            summary.failed.update(failures)
            for job, mode, out in _compute(loaded, fn, summary, pass_sources):
                writes.append((job, pool.submit(save_png, out, job.target, mode)))
            while len(writes) > 2 * batch_size:  # bounded: at most two batches of outputs wait
                _finish_write(*writes.popleft(), summary)
            bar.update(len(batch))
        while writes:
            _finish_write(*writes.popleft(), summary)
    return summary


# An input or an output of fn: its job, the OutputMode its PNG is written with, a (3, H, W) RGB image.
Item = tuple[Job, OutputMode, torch.Tensor]


def _load(batch: list[Job]) -> tuple[list[Item], dict[Path, str]]:
    """The batch's images, and the reason for each file that cannot be read."""
    loaded, failures = [], {}
    for job in batch:
        try:
            image, mode = load_image_with_mode(job.source)
            loaded.append((job, mode, image))
        except ImageLoadError as exc:
            failures[job.source] = str(exc).removeprefix(f"{job.source}: ")
    return loaded, failures


def _compute(loaded: list[Item], fn: BatchFn, summary: Summary, pass_sources: bool) -> list[Item]:
    """``fn`` over one loaded batch -> its items with ``fn``'s outputs as their images. A batch whose
    sizes differ (EXIF surprises) runs per image, and a failing batch is retried image by image, so
    that one bad image (or too big a batch) does not fail the others; what still fails goes into
    ``summary``."""
    if len(loaded) > 1 and len({tuple(image.shape) for *_, image in loaded}) > 1:
        return [done for item in loaded for done in _compute([item], fn, summary, pass_sources)]
    if not loaded:
        return []
    try:
        images = torch.stack([image for *_, image in loaded])
        outputs = fn(images, [job.source for job, *_ in loaded]) if pass_sources else fn(images)
    except (RuntimeError, MemoryError, ValueError) as exc:
        if len(loaded) > 1:
            return [done for item in loaded for done in _compute([item], fn, summary, pass_sources)]
        summary.failed[loaded[0][0].source] = f"processing failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        return []
    return [(job, mode, out) for (job, mode, _), out in zip(loaded, outputs)]


def _finish_write(job: Job, write: Future, summary: Summary) -> None:
    try:
        write.result()
        summary.done += 1
    except OSError as exc:
        summary.failed[job.source] = f"cannot write {job.target} ({exc})"
