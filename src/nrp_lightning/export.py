"""Export a purifier for deployment without this package: TorchScript and ONNX.

The exported graph is ``purify``: ``(B, 3, H, W)`` RGB in [0, 1] -> purified, clamped to [0, 1].
Batch, height and width are dynamic. ONNX uses opset ``ONNX_OPSET`` (18; onnxruntime >= 1.14),
input ``images``, output ``purified``, and is produced by the ``torch.export``-based exporter
(needs ``onnx`` and ``onnxscript``: ``pip install nrp-lightning[export]``). The exported graph does
not tile: feed images that fit in memory, or tile outside it. ``export_purifier`` also writes the
weights themselves, for this package and others that read them: ``*.safetensors`` and the Hugging
Face Hub folder layout (``hub.py``).
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

ONNX_OPSET = 18
FORMATS = ("onnx", "torchscript", "safetensors", "hub")
EXAMPLE_SIZE = (1, 3, 64, 64)  # the trace input; any size works afterwards


class ClampedPurifier(nn.Module):
    """``purifier(x).clamp(0, 1)``: the deployable purification step."""

    def __init__(self, purifier: nn.Module) -> None:
        super().__init__()
        self.purifier = purifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.purifier(images).clamp(0.0, 1.0)


def format_for(path: str | os.PathLike) -> str:
    """``onnx`` for ``*.onnx``, ``torchscript`` for ``*.pt``/``*.ts``/``*.torchscript``,
    ``safetensors`` for ``*.safetensors``, ``hub`` for a name without a suffix (a folder)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".ts", ".torchscript"):
        return "torchscript"
    if suffix == ".safetensors":
        return "safetensors"
    if not suffix:
        return "hub"
    raise ValueError(f"cannot tell the export format from {path}: name it *.onnx, *.pt (TorchScript), "
                     "*.safetensors, or a folder without a suffix (Hugging Face Hub layout)")


def _cpu_fp32_copy(purifier: nn.Module) -> nn.Module:
    """``ClampedPurifier`` around a CPU fp32 copy of ``purifier``: exporting leaves the caller's
    purifier on its device and in its dtype."""
    return ClampedPurifier(copy.deepcopy(purifier)).eval().cpu().float()


def export_torchscript(purifier: nn.Module, path: str | os.PathLike) -> Path:
    """Trace ``ClampedPurifier(purifier)`` to a TorchScript file; load with ``torch.jit.load``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _cpu_fp32_copy(purifier)
    with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit; it still is what C++/mobile load
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        traced = torch.jit.trace(module, torch.rand(EXAMPLE_SIZE))
        traced.save(str(path))
    return path


def export_onnx(purifier: nn.Module, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """ONNX file with dynamic batch/height/width axes (input ``images``, output ``purified``)."""
    try:
        import onnx  # noqa: F401  (the exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"ONNX export needs onnx and onnxscript ({exc}); `pip install onnx onnxscript` "
                          "or `pip install nrp-lightning[export]`") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _cpu_fp32_copy(purifier)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=1), 3: torch.export.Dim("width", min=1)}
    torch.onnx.export(module, (torch.rand(EXAMPLE_SIZE),), str(path), dynamo=True, opset_version=opset,
                      dynamic_shapes={"images": dims}, input_names=["images"], output_names=["purified"],
                      external_data=False, verbose=False)
    return path


def export_purifier(purifier: nn.Module, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Export to ``path`` as ``fmt`` (one of ``FORMATS``; default: from the file name). ``safetensors``
    and ``hub`` store the weights (and ``purifier.card``) as they are, not the clamped graph."""
    fmt = fmt or format_for(path)
    if fmt in ("safetensors", "hub"):
        from nrp_lightning.hub import save_safetensors, write_hub_folder

        return save_safetensors(purifier, path) if fmt == "safetensors" else write_hub_folder(purifier, path)
    if fmt == "onnx":
        return export_onnx(purifier, path)
    if fmt == "torchscript":
        return export_torchscript(purifier, path)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
