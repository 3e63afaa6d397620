"""The LitServe APIs of ``nrp-serve``: ``/purify``, ``/predict`` and, for the demo page, ``/attack``.

Each runs in its own inference worker processes (``--workers-per-device`` per device). With
``--max-batch-size`` above 1, LitServe hands ``predict`` the requests that arrived within
``--batch-timeout`` of each other; images of one size are purified as one batch, each with its own
dynamic-inference noise, so an answer does not depend on which requests shared its batch.
Requests that failed to decode arrive as ``RequestError`` and are passed through untouched
(see ``protocol``).

Each API's ``decode_request`` names its request schema in its annotation: LitServe hands that
annotation to FastAPI, which validates the body with it (so no ``from __future__ import
annotations`` here: the annotations must be classes, not strings).
"""
import base64
import inspect
from collections import defaultdict
from dataclasses import dataclass

import litserve as ls
import torch
from fastapi import Response
from fastapi.responses import JSONResponse
from torch import nn

from nrp_lightning import fast_paths
from nrp_lightning.images import png_bytes
from nrp_lightning.purify import dynamic_perturb, load_purifier, purify_images
from nrp_lightning.serve.protocol import (AttackRequest, ImageRequest, PredictRequest, PurifyRequest, RequestError,
                                          decode_request_image)
from nrp_lightning.serve.shutdown import in_worker_process

TOP_K = 5
# /attack runs gradient attacks at full resolution, so it takes at most this many pixels (the demo
# page scales photos to at most 512 px a side before sending them).
ATTACK_MAX_PIXELS = 1024 * 1024
# SSP on the page: 15 steps on a cosine schedule from a step of eps reach 0.98 of the feature
# distortion of the authors' 100 constant steps at 15% of the cost (attacks/ssp.py).
SSP_STEPS = 15
SSP_SOURCES = ("mobilenet_v2",)  # feature extractors whose ImageNet weights ship offline
# The page opens on a transfer attack, the threat NRP is trained against: MI-FGSM crafted on a
# classifier other than the victim. Measured on the page's first photo (chelsea) with the shipped
# purifier and the default victim MobileNetV2: from EfficientNet-Lite2 at 8/255 the victim's
# "Egyptian cat" (75.8%) becomes "tiger cat" (51.9%) and the purified image is an "Egyptian cat"
# (78.0%) again; at 16/255 none of the offline sources' MI-FGSM or DIM that fooled it was undone
# (the grid is in docs/serve.md).
PAGE_EXAMPLE, PAGE_ATTACK, PAGE_EPS = "chelsea", "mifgsm", 8
TRANSFER_SOURCES = ("efficientnet_lite2", "efficientnet_lite0")  # the page's source: the first that is not the victim


def page_source(victim: str) -> str:
    """The page's default source model for ``victim``: a transfer attack, never the victim itself."""
    return next(name for name in TRANSFER_SOURCES if name != victim)


@dataclass
class Job:
    """A decoded request: ``image`` ``(1, 3, H, W)`` in [0, 1] on the CPU, and its options."""

    image: torch.Tensor
    request: ImageRequest


def groups_by_size(images: dict[int, torch.Tensor]) -> list[list[int]]:
    """The keys of ``images`` (each ``(1, 3, H, W)``) grouped by ``(H, W)``: what can share a batch."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for key, image in images.items():
        groups[tuple(image.shape[-2:])].append(key)
    return list(groups.values())


def top_k(probs: torch.Tensor, labels: list[str], k: int = TOP_K) -> list[dict]:
    """The ``k`` most probable classes of ``probs`` ``(1000,)``: ``[{"class", "label", "p"}, ...]``."""
    values, indices = probs.topk(k)
    return [{"class": int(i), "label": labels[i], "p": round(float(v), 5)} for v, i in zip(values, indices)]


class ImageAPI(ls.LitAPI):
    """Decoding, batching and error pass-through shared by the routes; subclasses give
    ``decode_request`` (annotated with their request schema), ``setup``, ``serve`` (decoded jobs by position -> outputs)
    and ``encode``."""

    def __init__(self, api_path: str, max_pixels: int, threads: int | None = None, **batching) -> None:
        super().__init__(api_path=api_path, **batching)
        self.max_pixels, self.threads = max_pixels, threads

    def setup(self, device: str) -> None:
        in_worker_process()  # dies with the main process, leaves Ctrl-C to it
        fast_paths.tune_allocator()  # a worker process of its own: malloc keeps large activations' memory
        if self.threads:
            torch.set_num_threads(self.threads)
        self.torch_device = torch.device(device)

    @property
    def schema(self) -> type[ImageRequest]:
        """The request schema, as ``decode_request``'s annotation names it for LitServe and FastAPI."""
        return inspect.signature(self.decode_request).parameters["request"].annotation

    def decode(self, request: ImageRequest) -> Job | RequestError:
        image = decode_request_image(request, self.max_pixels)
        return image if isinstance(image, RequestError) else Job(image, request)

    def predict(self, x):
        """``x``: a ``Job`` or ``RequestError``, or with batching a list of them (LitServe's default
        ``batch`` leaves a list of non-tensors as it is: images of any size, grouped in ``serve``)."""
        items = x if self.max_batch_size > 1 else [x]
        jobs = {i: item for i, item in enumerate(items) if isinstance(item, Job)}
        outputs = self.serve(jobs) if jobs else {}
        answers = [outputs.get(i, item) for i, item in enumerate(items)]
        return answers if self.max_batch_size > 1 else answers[0]

    def encode_response(self, output) -> Response:
        return output.response() if isinstance(output, RequestError) else self.encode(output)

    def serve(self, jobs: dict[int, Job]) -> dict:
        raise NotImplementedError

    def encode(self, output) -> Response:
        raise NotImplementedError


class PurifierAPI(ImageAPI):
    """An ``ImageAPI`` holding a purifier (``checkpoint``; None: the shipped one)."""

    def __init__(self, api_path: str, checkpoint: str | None, max_pixels: int, max_memory: int | None = None,
                 **kwargs) -> None:
        super().__init__(api_path, max_pixels, **kwargs)
        self.checkpoint, self.max_memory = checkpoint, max_memory

    def setup(self, device: str) -> None:
        super().setup(device)
        self.purifier = load_purifier(self.checkpoint, device=self.torch_device)

    def purify(self, jobs: dict[int, Job]) -> dict[int, torch.Tensor]:
        """Purified ``(3, H, W)`` on the CPU for each job (tiled above ``max_memory``, as nrp-purify)."""
        inputs = {i: self.purifier_input(job) for i, job in jobs.items()}
        purified = {}
        for keys in groups_by_size(inputs):
            out = purify_images(self.purifier, torch.cat([inputs[i] for i in keys]), max_memory=self.max_memory)
            purified.update(zip(keys, out.cpu()))
        return purified

    @staticmethod
    def purifier_input(job: Job) -> torch.Tensor:
        """The job's image, plus its own dynamic-inference noise when it asks for ``dynamic``
        (seeded by its ``seed``: the same noise as ``purify_images(dynamic=True)`` with that seed)."""
        request: PurifyRequest = job.request
        if not request.dynamic:
            return job.image
        generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None
        return dynamic_perturb(job.image, generator)


class PurifyAPI(PurifierAPI):
    """``POST /purify``: an image -> its purified PNG, same size."""

    def __init__(self, checkpoint: str | None, max_pixels: int, **kwargs) -> None:
        super().__init__("/purify", checkpoint, max_pixels, **kwargs)

    def decode_request(self, request: PurifyRequest) -> Job | RequestError:
        return self.decode(request)

    def serve(self, jobs: dict[int, Job]) -> dict[int, torch.Tensor]:
        return self.purify(jobs)

    def encode(self, output: torch.Tensor) -> Response:
        return Response(png_bytes(output), media_type="image/png")


class PredictAPI(PurifierAPI):
    """``POST /predict``: an image -> the classifier's top-5 on it as given and on its purification."""

    def __init__(self, checkpoint: str | None, classifier: str, max_pixels: int, **kwargs) -> None:
        super().__init__("/predict", checkpoint, max_pixels, **kwargs)
        self.classifier_name = classifier

    def decode_request(self, request: PredictRequest) -> Job | RequestError:
        return self.decode(request)

    def setup(self, device: str) -> None:
        from nrp_lightning.cli_purify import build_source
        from nrp_lightning.models.classifiers import imagenet_labels

        super().setup(device)
        self.classifier = build_source(self.classifier_name).to(self.torch_device)
        self.labels = imagenet_labels()

    def classify(self, images: dict[int, torch.Tensor]) -> dict[int, list[dict]]:
        """Top-5 of the classifier for each ``(1, 3, H, W)`` or ``(3, H, W)`` image."""
        images = {i: x if x.dim() == 4 else x[None] for i, x in images.items()}
        ranked = {}
        with torch.no_grad():
            for keys in groups_by_size(images):
                batch = torch.cat([images[i] for i in keys]).to(self.torch_device)
                probs = self.classifier(batch).float().softmax(1).cpu()
                ranked.update((i, top_k(p, self.labels)) for i, p in zip(keys, probs))
        return ranked

    def serve(self, jobs: dict[int, Job]) -> dict[int, dict]:
        purified = self.purify({i: job for i, job in jobs.items() if job.request.purify})
        given, after = self.classify({i: job.image for i, job in jobs.items()}), self.classify(purified)
        answers = {}
        for i, job in jobs.items():
            answer = {"classifier": self.classifier_name, "given": given[i]}
            if i in purified:
                answer["purified"] = after[i]
                if job.request.return_purified:
                    answer["purified_png"] = base64.b64encode(png_bytes(purified[i])).decode()
            answers[i] = answer
        return answers

    def encode(self, output: dict) -> Response:
        return JSONResponse(output)


class AttackAPI(ImageAPI):
    """``POST /attack`` (demo page): an image -> an adversarial PNG within ``eps``/255, by SSP on a
    feature extractor or by MI-FGSM / DIM (untargeted, 10 steps) on a source classifier. One at a time."""

    def __init__(self, victim: str, max_pixels: int = ATTACK_MAX_PIXELS, **kwargs) -> None:
        super().__init__("/attack", min(max_pixels, ATTACK_MAX_PIXELS), **kwargs)
        # what the page's first clicks use (its default source, the victim for the white-box case,
        # SSP's features): loaded at setup, so that no first attack waits for them
        self.preload = (("classifier", page_source(victim)), ("classifier", victim), ("features", SSP_SOURCES[0]))

    def decode_request(self, request: AttackRequest) -> Job | RequestError:
        return self.decode(request)

    def setup(self, device: str) -> None:
        super().setup(device)
        self.models: dict[tuple[str, str], nn.Module] = {}
        for kind, name in self.preload:
            self.model(kind, name)

    def model(self, kind: str, name: str) -> nn.Module:
        """A feature extractor (``kind`` features) or classifier by name (as ``nrp-attack --source``
        takes it), loaded once."""
        from nrp_lightning.cli_purify import build_source
        from nrp_lightning.models import features

        if (kind, name) not in self.models:
            model = getattr(features, name)() if kind == "features" else build_source(name)
            self.models[kind, name] = model.to(self.torch_device)
        return self.models[kind, name]

    def serve(self, jobs: dict[int, Job]) -> dict[int, tuple[torch.Tensor, str] | RequestError]:
        return {i: self.attack(job.image.to(self.torch_device), job.request) for i, job in jobs.items()}

    def attack(self, x: torch.Tensor, request: AttackRequest) -> tuple[torch.Tensor, str] | RequestError:
        from nrp_lightning.attacks import transfer
        from nrp_lightning.attacks.ssp import SSP
        from nrp_lightning.weights import WeightsNotFoundError

        try:
            if request.attack == "ssp":
                if request.source not in SSP_SOURCES:
                    return RequestError(400, f"SSP's source must be one of {SSP_SOURCES} (feature extractors whose "
                                             f"weights ship offline), got {request.source!r}")
                ssp = SSP(eps=request.eps, step_size=request.eps, steps=SSP_STEPS, schedule="cosine")
                generator = torch.Generator(x.device).manual_seed(request.seed)
                x_adv = ssp(x, self.model("features", request.source), generator)
                return x_adv[0].cpu(), f"SSP, eps {request.eps:g}/255, {SSP_STEPS} cosine steps, on {request.source} features"
            model = self.model("classifier", request.source)
            attack = getattr(transfer, request.attack)(eps=request.eps)
            x_adv = attack(x, transfer.untargeted_labels(model, x), model, torch.Generator().manual_seed(request.seed))
            return x_adv[0].cpu(), f"{attack.name}, eps {request.eps:g}/255, {attack.steps} steps, on {request.source}"
        except (WeightsNotFoundError, RuntimeError, ValueError) as exc:
            return RequestError(400, f"cannot attack with source {request.source!r}: {str(exc).splitlines()[0]}")

    def encode(self, output: tuple[torch.Tensor, str]) -> Response:
        image, description = output
        return Response(png_bytes(image), media_type="image/png", headers={"X-Attack": description})
