"""Purification as a drop-in defence: load any purifier checkpoint, wrap any vision model.

``load_purifier(path)`` reads the authors' ``NRP.pth`` (RRDB) and ``NRP_resG.pth`` (ResNet), our
exported state dicts and our Lightning ``.ckpt`` files (always ``weights_only=True``), the same
state dict as ``*.safetensors``, a folder in the Hugging Face Hub layout (``model.safetensors``,
``config.json``, ``README.md``; written by ``hub.write_hub_folder``) and ``hf:ORG/NAME`` (that
folder on the Hub, through its cache). It detects the architecture from the keys and its size from
the shapes. ``PurifiedModel(purifier, model)`` puts purification (optionally dynamic, optionally
tiled) in front of a classifier, detector or segmenter.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from nrp_lightning.attacks.ssp import project_linf
from nrp_lightning.models.features import Normalize
from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier
from nrp_lightning.tiling import purify_tiled
from nrp_lightning.weights import (SAFETENSORS_SUFFIX, WeightsNotFoundError, hf_snapshot, load_state_dict,
                                   safetensors_metadata)

# Dynamic inference (the authors' purify.py): x_m = clip(clip(x + SIGMA * N(0,1), x - EPS, x + EPS), 0, 1).
DYNAMIC_SIGMA = 0.05  # std of the Gaussian noise, [0, 1] units
DYNAMIC_EPS = 16.0  # l_inf bound of that noise, pixel units (/255)
# Images smaller than this (either side) are edge-replicated up to it before purification: the
# purifier's zero padding would otherwise dominate a 1x1 or 2x2 input.
MIN_SIDE = 16
LIGHTNING_PREFIXES = ("purifier._orig_mod.", "purifier.")
# The notebook's options (model.input_skip and others measured as no gain) were removed after this commit.
LAB_TAG = "lab-2026-12 (commit 4733147)"
INPUT_SKIP_KEY = "input_skip_marker"  # state-dict entry of purifiers trained with the removed model.input_skip
# The purifier trained by this project's CPU recipe (experiment=nrp_cpu, lab/NOTEBOOK.md),
# shipped in the package with its card (config, command, corpus, metrics) beside it.
DEFAULT_PURIFIER = Path(__file__).parent / "pretrained" / "nrp_cpu.pth"
EXPECTED = ("expected a purifier: the authors' NRP.pth (RRDB keys conv_first.*, RRDB_trunk.{i}.RDB{1,2,3}."
            "conv{1..5}.*, trunk_conv.*) or NRP_resG.pth (ResNet keys conv_first.*, recon_trunk.{i}.conv{1,2}.*, "
            "conv_last.*), a state dict exported by nrp-train (.pth or .safetensors), an nrp-train Lightning "
            ".ckpt, a Hub folder (model.safetensors, config.json) or hf:ORG/NAME")
# The Hugging Face Hub layout of a purifier: the weights, their architecture, a model card, and the
# purifier's own card (``CARD_KEY``) beside the weights, where every loader of a card looks for it.
HF_PREFIX = "hf:"
HUB_WEIGHTS, HUB_CONFIG, HUB_README = "model.safetensors", "config.json", "README.md"
HUB_CARD = "model.json"
HUB_FILES = (HUB_WEIGHTS, HUB_CONFIG, HUB_README, HUB_CARD)
CARD_KEY = "nrp_card"  # the card (training command, corpus, measurements, gate) in a safetensors header


class PurifierLoadError(ValueError):
    """A file is not a purifier checkpoint; the message says what the file is and what was expected."""


@dataclass(frozen=True)
class PurifierSpec:
    """Architecture and size read off a state dict: ``arch`` is ``rrdb`` or ``resnet``."""

    arch: str
    nf: int
    nb: int
    gc: int | None = None

    def build(self) -> nn.Module:
        if self.arch == "rrdb":
            return RRDBPurifier(nf=self.nf, nb=self.nb, gc=self.gc)
        return ResNetPurifier(nf=self.nf, nb=self.nb)

    def __str__(self) -> str:
        size = f"nf={self.nf} nb={self.nb}" + (f" gc={self.gc}" if self.gc is not None else "")
        return f"{self.arch} purifier ({size})"


def _describe_keys(state: dict[str, Any]) -> str:
    """A short guess at what a non-purifier state dict is, for error messages."""
    keys = list(state)
    tensors = sum(isinstance(v, torch.Tensor) for v in state.values())
    head = ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
    prefixes = Counter(k.split(".", 1)[0] for k in keys)
    if "features" in prefixes and ("classifier" in prefixes or "fc" in prefixes):
        kind = "a torchvision classifier"
    elif {"conv1", "bn1", "layer1", "fc"} <= set(prefixes):
        kind = "a ResNet classifier"
    elif "conv_first" in prefixes:
        kind = "a purifier of an unknown or damaged layout"
    elif any(k.startswith(("critic.", "features.", "model.")) for k in keys):
        kind = "a model with sub-modules " + ", ".join(sorted(prefixes)[:5])
    else:
        kind = "top-level names " + ", ".join(sorted(prefixes)[:5])
    return f"a state dict of {tensors} tensors whose keys look like {kind} ({head})"


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def extract_purifier_state(obj: dict[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The purifier's plain state dict out of a loaded file: a plain state dict (possibly with a
    ``module.`` or ``_orig_mod.`` prefix) or a Lightning checkpoint (``state_dict`` with ``purifier.``)."""
    if isinstance(obj.get("state_dict"), dict):  # Lightning checkpoint
        inner = obj["state_dict"]
        for prefix in LIGHTNING_PREFIXES:
            state = _strip_prefix(inner, prefix)
            if state:
                return state
        prefixes = sorted({k.split(".", 1)[0] + "." for k in inner})
        raise PurifierLoadError(f"{source} is a Lightning checkpoint without purifier weights (its state_dict "
                                f"has the prefixes {', '.join(prefixes) or 'none'}; expected purifier.*); {EXPECTED}")
    state = obj
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = _strip_prefix(state, prefix)
    return state


def detect_purifier(state: dict[str, torch.Tensor], source: str = "state dict") -> PurifierSpec:
    """Architecture from the keys, ``nf``/``nb``/``gc`` from the shapes; ``PurifierLoadError`` otherwise."""
    def shape(key: str) -> torch.Size:
        value = state.get(key)
        if not isinstance(value, torch.Tensor):
            raise PurifierLoadError(f"{source}: key {key} is missing; it is {_describe_keys(state)}; {EXPECTED}")
        return value.shape

    if INPUT_SKIP_KEY in state:
        raise PurifierLoadError(f"{source} was trained with model.input_skip=true (P(x) = x + g(x)), an option removed "
                                f"after the tag {LAB_TAG} (measured as no gain, docs/results.md); load it with "
                                f"nrp-lightning at that tag")
    if "conv_first.weight" in state and any(k.startswith("RRDB_trunk.") for k in state):
        nf = shape("conv_first.weight")[0]
        gc = shape("RRDB_trunk.0.RDB1.conv1.weight")[0]
        nb = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"RRDB_trunk\.(\d+)\.", k)))
        return PurifierSpec("rrdb", nf, nb, gc)
    if "conv_first.weight" in state and any(k.startswith("recon_trunk.") for k in state):
        nf = shape("conv_first.weight")[0]
        nb = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"recon_trunk\.(\d+)\.", k)))
        return PurifierSpec("resnet", nf, nb)
    raise PurifierLoadError(f"{source} is {_describe_keys(state)}; {EXPECTED}")


def resolve_purifier_file(path: str | os.PathLike) -> Path:
    """The weights file ``path`` names: ``hf:ORG/NAME[@REVISION]`` -> the ``model.safetensors`` of
    its snapshot in the Hub's cache (downloaded when online), a folder -> its ``model.safetensors``,
    the bare name of a purifier shipped in the package (``nrp_real``; no such file here) -> that file,
    anything else -> itself."""
    if str(path).startswith(HF_PREFIX):
        try:
            path = hf_snapshot(str(path)[len(HF_PREFIX):], HUB_FILES)
        except WeightsNotFoundError as exc:
            raise PurifierLoadError(str(exc)) from None
    path = Path(path)
    shipped = DEFAULT_PURIFIER.with_name(f"{path.name}.pth")
    if not path.exists() and path.name == str(path) and not path.suffix and shipped.is_file():
        return shipped
    if not path.is_dir():
        return path
    if not (path / HUB_WEIGHTS).is_file():
        raise PurifierLoadError(f"{path} is a folder without {HUB_WEIGHTS}: a purifier folder holds {HUB_WEIGHTS}, "
                                f"{HUB_CONFIG} and {HUB_README} (nrp-purify export CHECKPOINT {path} --format hub)")
    return path / HUB_WEIGHTS


def _check_hub_config(path: Path, spec: PurifierSpec) -> None:
    """A Hub folder's ``config.json`` must describe the architecture its weights have."""
    config_path = path.parent / HUB_CONFIG
    if path.name != HUB_WEIGHTS or not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text())
        said = PurifierSpec(config["arch"], config["nf"], config["nb"], config.get("gc"))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PurifierLoadError(f"{config_path} is not a purifier config (arch, nf, nb, gc): "
                                f"{exc!r}") from None
    if said != spec:
        raise PurifierLoadError(f"{config_path} says {said} but {path} holds a {spec}; export the folder again")


def purifier_card(path: Path) -> dict[str, Any] | None:
    """The card of a purifier file (training command, corpus, measurements, gate): the ``CARD_KEY``
    metadata of a ``*.safetensors`` file, else the JSON beside the file (``nrp_cpu.pth`` ->
    ``nrp_cpu.json``, ``model.safetensors`` -> ``model.json``); None without one."""
    if path.suffix == SAFETENSORS_SUFFIX and (text := safetensors_metadata(path).get(CARD_KEY)):
        return json.loads(text)
    sidecar = path.with_suffix(".json")
    try:
        card = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    except json.JSONDecodeError:
        return None
    return card if isinstance(card, dict) else None


def _load_file(path: Path) -> dict[str, Any]:
    """``weights.load_state_dict`` with errors that say what the file is instead."""
    try:
        return load_state_dict(path)
    except WeightsNotFoundError:
        raise PurifierLoadError(f"purifier checkpoint {path} does not exist") from None
    except ValueError as exc:
        with open(path, "rb") as f:
            magic = f.read(4)
        if path.suffix == SAFETENSORS_SUFFIX:
            what = f"not a safetensors file ({str(exc.__cause__).splitlines()[0][:100]})"
        elif exc.__cause__ is None:  # it loaded, but is not a dict
            what = "a PyTorch file holding " + str(exc).split(" holds ", 1)[1].split(",")[0]
        elif magic.startswith(b"PK") or magic[:1] == b"\x80":  # torch zip archive or legacy pickle
            what = ("a PyTorch file that weights_only=True refuses (it pickles Python objects, not only "
                    f"tensors, or it is damaged: {str(exc.__cause__).splitlines()[0][:100]})")
        else:
            what = f"not a PyTorch file (it starts with the bytes {magic!r})"
        raise PurifierLoadError(f"{path} is {what}; {EXPECTED}") from None


def load_purifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> nn.Module:
    """A purifier from any supported checkpoint, strict-loaded, frozen, in eval mode on ``device``.
    ``path=None``: the purifier that ships with the package (``DEFAULT_PURIFIER``); ``path`` may be a
    ``.pth``/``.ckpt``/``.safetensors`` file, a Hub folder or ``hf:ORG/NAME[@REVISION]``.

    The module maps ``(B, 3, H, W)`` in [0, 1] to ``(B, 3, H, W)`` (unclamped; use ``purify_images``).
    Its ``spec`` attribute says what was detected, e.g. ``rrdb purifier (nf=64 nb=23 gc=32)``; ``path``
    is the weights file read, ``card`` its card (``purifier_card``) or None.
    Raises ``PurifierLoadError`` for anything that is not a purifier, saying what the file is.
    """
    path = resolve_purifier_file(path) if path is not None else DEFAULT_PURIFIER
    state = extract_purifier_state(_load_file(path), str(path))
    spec = detect_purifier(state, str(path))
    _check_hub_config(path, spec)
    purifier = spec.build()
    try:
        purifier.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PurifierLoadError(f"{path} looks like a {spec} but does not load strictly: "
                                f"{str(exc).splitlines()[0]} ...; {EXPECTED}") from None
    purifier.spec, purifier.path, purifier.card = spec, path, purifier_card(path)
    return purifier.to(device=device, dtype=dtype).eval().requires_grad_(False)


def dynamic_perturb(x: torch.Tensor, generator: torch.Generator | None = None,
                    sigma: float = DYNAMIC_SIGMA, eps: float = DYNAMIC_EPS,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamic inference's random input: ``clip(clip(x + sigma*N(0,1), x-eps/255, x+eps/255), 0, 1)``.

    ``x``: ``(B, 3, H, W)`` in [0, 1]. The noise is drawn on the CPU from ``generator`` (then moved),
    so a seed gives the same result on any device; ``noise`` (a standard normal draw of ``x``'s
    shape, e.g. ``torch.randn_like(x)`` on the device, as training draws it) replaces that draw.
    ``sigma`` in [0, 1] units, ``eps`` in /255.
    """
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    return project_linf(x + sigma * noise, x, eps / 255.0)


def purify_images(purifier: nn.Module, x: torch.Tensor, *, dynamic: bool = False,
                  generator: torch.Generator | None = None, max_memory: int | None = None,
                  halo: int | None = None) -> torch.Tensor:
    """Purified images ``(B, 3, H, W)`` in [0, 1] from ``x`` ``(B, 3, H, W)`` in [0, 1], any size.

    ``dynamic`` adds the dynamic-inference noise first (drawn from ``generator``). Images larger than
    the ``max_memory`` budget (bytes; default: see ``tiling.default_memory_budget``) are purified in
    overlapping tiles (``halo``: see ``tiling.purify_tiled``); images smaller than ``MIN_SIDE`` are edge-replicated up to it and cropped back.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    param = next(purifier.parameters())
    x = x.to(device=param.device, dtype=param.dtype)
    if dynamic:
        x = dynamic_perturb(x, generator)
    h, w = x.shape[-2:]
    pad_h, pad_w = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    if pad_h or pad_w:
        x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    with torch.no_grad():
        out = purify_tiled(purifier, x, max_memory=max_memory, halo=halo)
    return out[..., :h, :w]


class PurifiedModel(nn.Module):
    """``model(purify(x))`` with the input range and normalization kept right.

    Args:
        purifier: from ``load_purifier`` (works on [0, 1] RGB).
        model: any module; it receives what it received before, only purified.
        input_range: the pixel range the wrapper is given and, without ``mean``/``std``, hands on
            (``(0, 1)`` for torchvision, ``(0, 255)`` for models fed raw pixels).
        mean, std: per-channel normalization (in [0, 1] units) the model expects; applied after
            purification. With ``input_normalized=True`` the wrapper's input is already normalized with
            them (it is un-normalized, purified, and normalized again). Leave them out for a model that
            normalizes its own input (``normalizes_input``, as every ``load_classifier`` model does):
            giving them there is refused, since the model would see its input normalized twice.
        dynamic: dynamic inference (fresh noise every call), reproducible with ``seed``.
        max_memory: tiling budget in bytes (``None``: the default budget of the device).
        gate: a ``gate.PurificationGate`` (e.g. ``defenses.nrp.load_gate(purifier)``): purify only the
            images it flags, hand the others on as they came.

    ``forward`` takes ``(B, 3, H, W)`` or, for torchvision detectors, a list of ``(3, H, W)``;
    further arguments (e.g. detection targets) pass through to ``model``.
    """

    def __init__(self, purifier: nn.Module, model: nn.Module, *, input_range: tuple[float, float] = (0.0, 1.0),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 input_normalized: bool = False, dynamic: bool = False, seed: int | None = None,
                 max_memory: int | None = None, gate: nn.Module | None = None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if input_normalized and mean is None:
            raise ValueError("input_normalized=True needs the mean and std the input was normalized with")
        if mean is not None and getattr(model, "normalizes_input", False):
            raise ValueError(f"{getattr(model, 'name', type(model).__name__)} normalizes its own input (it takes "
                             "[0, 1] RGB); drop mean/std, or it sees its input normalized twice: "
                             "PurifiedModel(purifier, model)")
        low, high = map(float, input_range)
        if not high > low:
            raise ValueError(f"input_range must be (low, high) with high > low, got {input_range}")
        self.purifier, self.model = purifier.eval().requires_grad_(False), model
        self.input_range, self.input_normalized = (low, high), input_normalized
        self.normalize = Normalize(tuple(mean), tuple(std)) if mean is not None else None
        self.dynamic, self.max_memory, self.gate = dynamic, max_memory, gate
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapper's input -> [0, 1] RGB for the purifier."""
        if self.input_normalized:
            return x * self.normalize.std.to(x) + self.normalize.mean.to(x)
        low, high = self.input_range
        return (x - low) / (high - low)

    def from_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """Purified [0, 1] RGB -> what ``model`` expects."""
        if self.normalize is not None:
            return self.normalize(x)
        low, high = self.input_range
        return x * (high - low) + low

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapper's input (batch) -> the model's purified input, same shape and convention."""
        squeeze = x.dim() == 3
        batch = x.unsqueeze(0) if squeeze else x
        unit = self.to_unit_range(batch).clamp(0.0, 1.0)
        out = purify_images(self.purifier, unit, dynamic=self.dynamic, generator=self.generator,
                            max_memory=self.max_memory)
        if self.gate is not None:
            out = self.gate(unit.to(out), out)
        out = out.to(x.dtype)
        out = self.from_unit_range(out)
        return out[0] if squeeze else out

    def forward(self, x: torch.Tensor | list[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        purified = [self.purify(t) for t in x] if isinstance(x, (list, tuple)) else self.purify(x)
        return self.model(purified, *args, **kwargs)
