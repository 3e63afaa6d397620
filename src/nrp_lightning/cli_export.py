"""``nrp-purify export [CHECKPOINT] OUTPUT``: a purifier as ONNX or TorchScript, or its weights as
safetensors or a Hugging Face Hub folder (``export.py``, ``hub.py``)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from nrp_lightning.cli_common import paragraphs
from nrp_lightning.export import FORMATS


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrp-purify export",
        description=paragraphs(
            "Export a purifier to ONNX (opset 18, dynamic batch/height/width, input 'images', output 'purified') "
            "or TorchScript. The exported graph maps (B,3,H,W) RGB in [0,1] to the purified image clamped to "
            "[0,1]; it does not tile, so feed it images that fit in memory.",
            "Or export the weights: *.safetensors (the plain state dict with the purifier's card as metadata) "
            "or a folder in the Hugging Face Hub layout (model.safetensors, config.json, a README model card with "
            "the measured table and the training command, model.json with the card); upload that folder with "
            "`hf upload ORG/NAME FOLDER` and load it anywhere with load_purifier('hf:ORG/NAME')."),
        epilog="examples: nrp-purify export nrp_cpu.onnx   (the purifier shipped with nrp-lightning)\n"
               "          nrp-purify export outputs/<run>/purifier.pth purifier.pt   (one you trained, TorchScript)\n"
               "          nrp-purify export hub/nrp_cpu --format hub   (the shipped purifier's Hub folder)\n"
               "          nrp-purify export outputs/<run>/purifier.pth purifier.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="any purifier checkpoint nrp-purify accepts (default: the "
                                                      "purifier shipped in the package, nrp_cpu.pth)")
    parser.add_argument("output", help="output: *.onnx, *.pt (TorchScript), *.safetensors, or a folder (Hub layout)")
    parser.add_argument("--format", choices=FORMATS, help="default: from OUTPUT's extension (none: hub)")
    return parser


def export_main(argv: Sequence[str]) -> int:
    from nrp_lightning.export import export_purifier
    from nrp_lightning.purify import PurifierLoadError, load_purifier

    parser = export_parser()
    args = parser.parse_args(argv)
    try:
        purifier = load_purifier(args.checkpoint)
        path = export_purifier(purifier, args.output, args.format)
    except (PurifierLoadError, ValueError, ImportError) as exc:
        parser.error(str(exc))
    print(f"exported {purifier.spec} from {purifier.path} to {path}", file=sys.stderr)
    return 0
