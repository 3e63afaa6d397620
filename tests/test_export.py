"""Exported purifiers (TorchScript, ONNX via onnxruntime) compute what PyTorch computes."""
from __future__ import annotations

import pytest
import torch

from nrp_lightning.export import ONNX_OPSET, export_purifier, format_for
from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier
from nrp_lightning.purify import purify_images

ATOL = 1e-5  # float32 kernels differ in summation order only


@pytest.fixture(scope="module")
def purifier():
    torch.manual_seed(0)
    return RRDBPurifier(8, 1, 4).eval()


def test_torchscript_matches_pytorch_at_another_size(tmp_path, purifier):
    path = export_purifier(purifier, tmp_path / "p.pt")
    scripted = torch.jit.load(str(path))
    x = torch.rand(2, 3, 40, 56)  # traced at 64x64
    torch.testing.assert_close(scripted(x), purify_images(purifier, x), atol=ATOL, rtol=0)


def test_onnx_matches_pytorch_with_dynamic_axes(tmp_path, purifier):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = export_purifier(purifier, tmp_path / "p.onnx")
    model = onnx.load(str(path))
    assert model.opset_import[0].version == ONNX_OPSET
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 33, 47), (3, 3, 64, 20)):
        x = torch.rand(shape)
        (out,) = session.run(None, {"images": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), purify_images(purifier, x), atol=ATOL, rtol=0)


def test_resnet_purifier_exports_too(tmp_path):
    purifier = ResNetPurifier(8, 2).eval()
    scripted = torch.jit.load(str(export_purifier(purifier, tmp_path / "r.pt")))
    x = torch.rand(1, 3, 24, 24)
    torch.testing.assert_close(scripted(x), purifier(x).clamp(0, 1), atol=ATOL, rtol=0)


def test_format_from_name():
    assert format_for("a.onnx") == "onnx" and format_for("a.pt") == "torchscript"
    with pytest.raises(ValueError, match="name it"):
        format_for("a.bin")
