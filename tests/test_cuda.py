"""CUDA variants of the key tests: bf16 + channels_last (+ torch.compile) training through
``pl.Trainer``, the training step without host-device syncs, tiled and untiled purification,
CUDA against CPU purification, ``PurifiedModel`` and the ONNX export of a purifier on the GPU.

Every test is marked ``gpu``: ``conftest.py`` skips them where ``torch.cuda.is_available()`` is
False (CI), and they run on ``torch.device("cuda")`` where it is True. The module is sized for
about three minutes on one GPU, most of it the first ``torch.compile`` (the later compiled test
reuses its graphs).

Dry run on a CPU: ``NRP_GPU_TESTS_ON_CPU=1 python -m pytest tests/test_cuda.py`` runs the same tests
on ``torch.device("cpu")`` instead. With the variable set the tests do not carry the ``gpu`` mark
(so conftest does not skip them) and the ``device`` fixture returns the CPU; the CUDA-only parts
(``torch.cuda.set_sync_debug_mode``, cuDNN's benchmark mode) are skipped there, so the dry run checks
the logic of every test, not what only a GPU can show: a dry run that passes says nothing about
host-device syncs or CUDA kernels.

Tolerances: CUDA kernels sum in another order (and cuDNN may pick Winograd or FFT convolutions), so
"fp32" comparisons run with TF32 off (``ieee_fp32``) and allow ``FP32_ATOL``; the device defaults
(TF32 convolutions on Ampere and later) and bf16 get looser bounds.
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Iterator

import hydra
import pytest
import pytorch_lightning as pl
import torch
from _tiny import smooth_images, tiny_classifier
from test_train import TINY
from torch import nn

from nrp_lightning.config import compose
from nrp_lightning.export import export_purifier
from nrp_lightning.models.features import IMAGENET_MEAN, IMAGENET_STD
from nrp_lightning.models.purifier import RRDBPurifier
from nrp_lightning.purify import PurifiedModel, load_purifier, purify_images
from nrp_lightning.tiling import bytes_per_pixel, purify_tiled
from nrp_lightning.train import build_module, train

ON_CPU = os.environ.get("NRP_GPU_TESTS_ON_CPU") == "1"  # the dry run: see the module docstring
pytestmark = [] if ON_CPU else [pytest.mark.gpu]

FP32_ATOL = 1e-4  # fp32 without TF32: summation order and convolution algorithm only
TF32_ATOL = 1e-2  # the device's default convolutions (TF32 on Ampere and later)
BF16_ATOL = 3e-2  # bf16 purifier against fp32 on the CPU (measured 6e-3 on the CPU's own bf16)
FAST = ["module.channels_last=true"]  # with bf16-mixed and module.compile: the training setting on CUDA


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device("cpu") if ON_CPU else torch.device("cuda")


def ieee_fp32():
    """cuDNN convolutions in full fp32 (no TF32) inside the block; restored after."""
    return torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False)


@contextlib.contextmanager
def no_host_syncs(device: torch.device) -> Iterator[None]:
    """Any host-device synchronisation inside the block raises (CUDA; nothing on the CPU)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


class NoSyncsInBatches(pl.Callback):
    """``no_host_syncs`` from ``on_train_batch_start`` to ``on_train_batch_end`` of the given
    batches: the whole training step (forward, SSP, both backward passes and Adam steps, logging)."""

    def __init__(self, device: torch.device, batches: tuple[int, ...]) -> None:
        self.device, self.batches, self.checked = device, batches, []
        self._stack = contextlib.ExitStack()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx in self.batches:
            self._stack.enter_context(no_host_syncs(self.device))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx in self.batches:
            self._stack.close()
            self.checked.append(batch_idx)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._stack.close()


def fit_bf16(overrides: list[str], device: torch.device, run_dir, iterations: int = 3,
             callbacks: tuple[pl.Callback, ...] = ()):
    """``iterations`` training steps of the tiny config (``TINY`` + ``overrides``) on ``device``
    with bf16-mixed precision, no validation: ``(module, trainer, state dict before)``.
    ``log_every_n_steps=50``: the divergence guard reads its streak counter on the host only when
    the iteration count reaches a multiple of 50 (by design), never in these steps."""
    cfg = compose(TINY + list(overrides), run_dir=str(run_dir))
    torch.manual_seed(0)
    module = build_module(cfg)
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision="bf16-mixed", max_steps=2 * iterations,
                         limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=50, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         inference_mode=False, benchmark=device.type == "cuda", callbacks=list(callbacks),
                         default_root_dir=str(run_dir))
    trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data, _convert_="all"))
    return module, trainer, before


def changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k].cpu()) for k in before if k.startswith(prefix))


# ------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bf16_channels_last_training_steps_update_purifier_and_critic(device, tmp_path, compiled):
    """Three real iterations through ``pl.Trainer`` (bf16-mixed, channels_last, with and without
    ``module.compile``): every loss and gradient finite (no step skipped by the divergence guard),
    purifier and critic moved, the frozen features did not."""
    module, trainer, before = fit_bf16(FAST + [f"module.compile={compiled}"], device, tmp_path)
    assert trainer.strategy.root_device.type == device.type and trainer.global_step == 6
    assert int(module._nonfinite["total"]) == 0  # no purifier or critic step was skipped
    metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert {"train/loss_purifier", "train/loss_adv", "train/loss_img", "train/loss_feat", "train/loss_critic",
            "train/grad_norm_purifier", "train/grad_norm_critic"} <= set(metrics)
    assert all(torch.isfinite(v).all() for v in metrics.values()), metrics
    after = module.state_dict()
    assert changed(before, after, "purifier.") and changed(before, after, "critic.")
    assert not changed(before, after, "features.")


def test_a_short_run_with_validation_checkpoints_and_report_on_the_device(device, tmp_path):
    """``train(cfg)`` as the command line runs it, on the device in bf16 with channels_last:
    validation (SSP under enable_grad, attack shares), checkpoints, exported purifier, report."""
    overrides = ["steps=2", "val_every=1", "checkpoint_every=1", f"trainer.accelerator={device.type}",
                 "trainer.precision=bf16-mixed", f"++trainer.benchmark={device.type == 'cuda'}"]
    result = train(compose(TINY + FAST + overrides, run_dir=str(tmp_path)))
    assert result["global_step"] == 4
    assert all(torch.isfinite(torch.tensor(v)) for v in result["report"].values()), result["report"]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert "cuda" in ckpt["nrp_rng_states"] or device.type != "cuda"  # the CUDA generator is saved too
    assert ckpt["nrp_nonfinite"] == {"total": 0, "streak": 0}
    purifier = load_purifier(result["purifier"])  # the exported state dict loads on the CPU
    assert str(purifier.spec) == "rrdb purifier (nf=8 nb=1 gc=4)"


# --------------------------------------------------------------------------- host-device syncs
def test_training_attack_runs_without_host_syncs(device, tmp_path):
    """The first lines of ``training_step`` (F(x) without gradient, then ``find_adversaries``:
    SSP plus the weakened share of the batch, ``module.weak_fraction=0.5`` in experiment=demo)
    under bf16 autocast and channels_last, as the Trainer runs them, with no host-device sync."""
    cfg = compose(TINY + FAST, run_dir=str(tmp_path))
    module = build_module(cfg).to(device)
    module.configure_model()
    module.train()
    assert module.hparams.weak_fraction > 0
    x = module._prepare(smooth_images(2, 32).to(device))
    with torch.autocast(device.type, dtype=torch.bfloat16), no_host_syncs(device):
        with torch.no_grad():
            feat_clean = module.features(x)
        x_adv = module.find_adversaries(x)
    eps = module.attack.eps / 255
    assert x_adv.device == x.device and x_adv.shape == x.shape and feat_clean.device == x.device
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() > 0


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_whole_training_step_runs_without_host_syncs(device, tmp_path, compiled):
    """The stated goal: no host-device synchronisation in a training step on CUDA (bf16-mixed,
    channels_last, fused Adam with the divergence guard on the device). Iteration 0 is the warm-up
    (cuDNN benchmarking, compilation, and ``count_nonfinite`` turning its int counters into device
    tensors with ``torch.as_tensor(0, device=...)``, a copy that syncs); iterations 1 and 2 run with
    ``set_sync_debug_mode("error")``, so the first sync raises with the line that made it."""
    check = NoSyncsInBatches(device, batches=(1, 2))
    try:
        _, trainer, _ = fit_bf16(FAST + [f"module.compile={compiled}"], device, tmp_path, callbacks=(check,))
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert check.checked == [1, 2] and trainer.global_step == 6
    assert all(opt.defaults.get("fused") for opt in trainer.optimizers)  # the sync-free guard path


# -------------------------------------------------------------------------------- purification
def test_tiled_equals_untiled_on_the_device(device):
    """As test_tiling's test, on the device: with the default halo only float rounding differs."""
    torch.manual_seed(0)
    purifier = RRDBPurifier(8, 1, 4).eval().to(device)  # receptive margin 17 px
    x = torch.rand(1, 3, 96, 128).to(device)
    budget = 84 * 84 * bytes_per_pixel(purifier)  # 84x84 tiles: 2x3 per image
    with torch.no_grad():
        with ieee_fp32():
            whole = purify_tiled(purifier, x, max_memory=1 << 40)
            tiled = purify_tiled(purifier, x, max_memory=budget)
            rough = purify_tiled(purifier, x, max_memory=budget, halo=0, ramp=4)
        tiled_default = purify_tiled(purifier, x, max_memory=budget)  # TF32 convolutions where the device has them
    assert tiled.device == x.device and tiled.shape == x.shape
    assert (tiled - whole).abs().max() < FP32_ATOL
    assert (rough - whole).abs().max() > 10 * FP32_ATOL  # without context the seams are real: the test can fail
    assert (tiled_default - whole).abs().max() < TF32_ATOL


def test_device_purification_matches_the_cpu_in_fp32_and_bf16(device):
    """The shipped purifier (``load_purifier()``) on the device against the same on the CPU: fp32
    within rounding, with the device's default convolutions and in bf16 (``dtype=torch.bfloat16``)
    within looser bounds; images smaller than ``MIN_SIDE`` and seeded dynamic inference too (its
    noise is drawn on the CPU, so a seed gives the same input on any device)."""
    cpu = load_purifier()
    on_device = load_purifier(device=device)
    bf16 = load_purifier(device=device, dtype=torch.bfloat16)
    for x in (smooth_images(2, 48), torch.rand(1, 3, 33, 47), torch.rand(2, 3, 5, 7)):
        reference = purify_images(cpu, x)
        with ieee_fp32():
            exact = purify_images(on_device, x)  # x on the CPU: purify_images moves it
        assert exact.device.type == device.type and exact.dtype == torch.float32 and exact.shape == x.shape
        torch.testing.assert_close(exact.cpu(), reference, atol=FP32_ATOL, rtol=0)
        torch.testing.assert_close(purify_images(on_device, x).cpu(), reference, atol=TF32_ATOL, rtol=0)
        low = purify_images(bf16, x)
        assert low.dtype == torch.bfloat16 and low.device.type == device.type
        torch.testing.assert_close(low.float().cpu(), reference, atol=BF16_ATOL, rtol=0)
    x = smooth_images(1, 32)
    dynamic = purify_images(cpu, x, dynamic=True, generator=torch.Generator().manual_seed(3))
    with ieee_fp32():
        dynamic_on_device = purify_images(on_device, x, dynamic=True, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(dynamic_on_device.cpu(), dynamic, atol=FP32_ATOL, rtol=0)
    assert not torch.allclose(dynamic, purify_images(cpu, x), atol=1e-3)  # the noise did something


def test_purified_model_on_the_device_matches_the_cpu(device):
    """``PurifiedModel`` moved to the device with ``.to``: a classifier's logits, the normalized and
    the 0..255 conventions, detector-style lists and seeded dynamic inference agree with the CPU."""
    torch.manual_seed(0)
    purifier, x = RRDBPurifier(8, 1, 4).eval(), smooth_images(2, 32)
    norm = lambda t: (t - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)  # noqa: E731
    cases = [  # (wrapper kwargs, model, input)
        ({}, tiny_classifier(), x),
        ({"dynamic": True, "seed": 3}, tiny_classifier(), x),
        ({"input_range": (0, 255)}, nn.Identity(), x * 255),
        ({"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_normalized": True}, nn.Identity(), norm(x)),
    ]
    for kwargs, model, inputs in cases:
        reference = PurifiedModel(purifier, model, **kwargs)(inputs)
        wrapped = PurifiedModel(copy.deepcopy(purifier), copy.deepcopy(model), **kwargs).to(device)
        with ieee_fp32():
            out = wrapped(inputs.to(device))
        assert out.device.type == device.type, kwargs
        torch.testing.assert_close(out.cpu(), reference, atol=FP32_ATOL * (255 if "input_range" in kwargs else 1),
                                   rtol=0, msg=lambda m: f"{kwargs}: {m}")
    wrapped = PurifiedModel(copy.deepcopy(purifier), nn.Identity()).to(device)
    with ieee_fp32():
        images = wrapped([x[0].to(device), x[1, :, :10, :20].to(device)])
    reference = PurifiedModel(purifier, nn.Identity())([x[0], x[1, :, :10, :20]])
    for got, want in zip(images, reference):
        assert got.device.type == device.type
        torch.testing.assert_close(got.cpu(), want, atol=FP32_ATOL, rtol=0)


def parameter_gradients(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    net(x).square().sum().backward()
    return [p.grad for p in net.parameters()]


def test_activation_checkpointing_gives_the_same_gradients_on_the_device(device):
    """As test_models' test, on the device, and both against the CPU's gradients."""
    torch.manual_seed(0)
    reference, x = RRDBPurifier(8, 2, 4), torch.rand(1, 3, 16, 16)
    copies = [RRDBPurifier(8, 2, 4, activation_checkpointing=recompute) for recompute in (False, True)]
    for net in copies:
        net.load_state_dict(reference.state_dict())
    on_cpu = parameter_gradients(reference, x)
    with ieee_fp32():
        plain, recomputed = (parameter_gradients(net.to(device), x.to(device)) for net in copies)
    for g_cpu, g_plain, g_recomputed in zip(on_cpu, plain, recomputed, strict=True):
        assert g_recomputed.device.type == device.type
        torch.testing.assert_close(g_recomputed, g_plain)
        torch.testing.assert_close(g_plain.cpu(), g_cpu, atol=1e-3, rtol=1e-3)


# -------------------------------------------------------------------------------------- export
def test_onnx_export_of_a_device_purifier_matches_pytorch_on_the_device(device, tmp_path):
    """A purifier that lives on the device, exported to ONNX: onnxruntime (CPU provider) computes
    what PyTorch computes on the device, at sizes other than the traced one."""
    pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install nrp-lightning[export])")
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install nrp-lightning[export])")
    ort = pytest.importorskip("onnxruntime", reason="the ONNX parity check needs onnxruntime")
    torch.manual_seed(0)
    purifier = RRDBPurifier(8, 1, 4).eval().to(device)
    inputs = [torch.rand(1, 3, 33, 47), torch.rand(3, 3, 64, 20)]
    with ieee_fp32():  # before the export: see test_export_leaves_the_purifier_on_its_device
        expected = [purify_images(purifier, x).cpu() for x in inputs]
    session = ort.InferenceSession(str(export_purifier(purifier, tmp_path / "p.onnx")), providers=["CPUExecutionProvider"])
    for x, want in zip(inputs, expected):
        (out,) = session.run(None, {"images": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), want, atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["p.onnx", "p.pt"])
def test_export_leaves_the_purifier_on_its_device(device, tmp_path, name):
    """Exporting is not supposed to move the caller's purifier: after ``export_purifier`` it still
    lives on the device it was on (the exporters trace a CPU copy, or move it back)."""
    if name.endswith(".onnx"):
        pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install nrp-lightning[export])")
        pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (pip install nrp-lightning[export])")
    purifier = RRDBPurifier(8, 1, 4).eval().to(device)
    export_purifier(purifier, tmp_path / name)
    assert {p.device.type for p in purifier.parameters()} == {device.type}
