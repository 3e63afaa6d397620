"""What a request to ``nrp-serve`` may hold, and how a bad one is answered.

A request is an image file's bytes, either as the raw body (any Content-Type but JSON; options in
the query string, ``POST /purify?dynamic=true&seed=0``) or as JSON with the file in base64
(``{"image": "...", "dynamic": true}``). ``RawImageBodies`` turns the first form into the second
before FastAPI sees it, so one schema per route (``PurifyRequest``, ...) validates both: an unknown
option, a wrong type or a body that is not JSON is refused with 422 before it reaches a worker.

Image errors (not an image, truncated, empty, too many pixels) are found in the worker, when the
file is decoded. They travel as ``RequestError`` values, not exceptions: LitServe fails every
request of a dynamic batch when one of them raises (Lightning-AI/LitServe#340), so a bad upload
would take its batch mates down with it. ``encode_response`` turns a ``RequestError`` into its
4xx JSON answer, ``{"detail": "..."}``, the shape FastAPI gives its own errors.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from nrp_lightning.images import ImageLoadError, ImageTooLargeError, decode_image

DEFAULT_MAX_PIXELS = 24_000_000  # a 6000x4000 photo
# A body may hold an image file of --max-pixels pixels stored as plainly as PNG allows (16-bit
# RGBA, 8 bytes a pixel), in base64 (4/3) inside JSON, and a little more.
BODY_BYTES_PER_PIXEL = 8 * 4 / 3
BODY_SLACK = 1 << 16
ATTACKS = ("ssp", "mifgsm", "dim")


class ImageRequest(BaseModel):
    """The image alone: ``image`` is an image file (PNG, JPEG, WebP, TIFF, ...) in base64."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="the bytes of an image file, base64-encoded")


class PurifyRequest(ImageRequest):
    """``POST /purify``: the purified PNG of ``image``, same size."""

    dynamic: bool = Field(False, description="dynamic inference: purify x + clipped Gaussian noise (sigma 0.05, "
                                             "within 16/255), the authors' defence against white-box attackers")
    seed: int | None = Field(None, description="seed of the dynamic noise (default: fresh noise every request)")


class PredictRequest(PurifyRequest):
    """``POST /predict``: the classifier's top-5 on ``image`` and on its purification."""

    purify: bool = Field(True, description="also purify and classify the purified image")
    return_purified: bool = Field(False, description="add the purified PNG, base64, as purified_png")


class AttackRequest(ImageRequest):
    """``POST /attack`` (the demo page's server only): the adversarial PNG of ``image``."""

    attack: Literal[ATTACKS] = Field("mifgsm", description="ssp, mifgsm or dim")
    eps: float = Field(16.0, ge=0, le=64, description="l_inf budget in pixel units (16 = 16/255)")
    source: str = Field("mobilenet_v2", description="the classifier the attack is crafted on (mifgsm, dim) "
                                                    "or whose features SSP distorts (ssp)")
    seed: int = Field(0, description="seed of the attack's random start or input transforms")


@dataclass(frozen=True)
class RequestError:
    """A request that cannot be served: ``status`` (4xx) and what is wrong, for the client."""

    status: int
    detail: str

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, status_code=self.status)


def decode_request_image(request: ImageRequest, max_pixels: int) -> torch.Tensor | RequestError:
    """``(1, 3, H, W)`` in [0, 1] from the request's image, or the ``RequestError`` that says why not:
    400 for bad base64 or a file that is empty, truncated or not an image, 413 above ``max_pixels``."""
    try:
        data = base64.b64decode(request.image, validate=True)
    except (binascii.Error, ValueError) as exc:
        return RequestError(400, f"'image' is not valid base64 ({exc}); send the file's bytes as the body, or "
                                 "base64 in JSON")
    try:
        return decode_image(data, "the image", max_pixels)[None]
    except ImageTooLargeError as exc:
        return RequestError(413, f"{exc} by this server (--max-pixels)")
    except ImageLoadError as exc:
        return RequestError(400, str(exc))


async def _discard_rest(receive: Receive, more: bool) -> bool:
    """Read and drop the rest of a refused body; False if the client went away meanwhile.

    Answering before the body is read makes the server close a socket with unread bytes in it,
    which the kernel turns into a reset: the client then sees "connection reset" instead of the
    413 (it did, under load, in CI). Nothing read here is kept, so memory stays bounded."""
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        more = message.get("more_body", False)
    return True


def max_body_bytes(max_pixels: int) -> int:
    """The largest body accepted for images of up to ``max_pixels`` pixels."""
    return int(max_pixels * BODY_BYTES_PER_PIXEL) + BODY_SLACK


class RawImageBodies:
    """ASGI middleware for the image routes ``paths``: a body that is not JSON is the image file
    itself; it becomes ``{"image": base64, **query options}``. Bodies over ``max_bytes`` get 413
    (after the rest of the body is read and dropped, so that the client gets the answer);
    a JSON body with a query string gets 400 (its options belong in the JSON)."""

    def __init__(self, app: ASGIApp, paths: tuple[str, ...], max_bytes: int) -> None:
        self.app, self.paths, self.max_bytes = app, set(paths), max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                error = RequestError(413, f"the request body is over {self.max_bytes} bytes, the most this server "
                                          "takes (it follows --max-pixels)")
                if not await _discard_rest(receive, more):
                    return
                await error.response()(scope, receive, send)
                return
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        if content_type.startswith("application/json"):
            if query:
                await RequestError(400, f"options go in the JSON body when the body is JSON, not in the query "
                                        f"string ({query})").response()(scope, receive, send)
                return
        else:
            body = json.dumps({"image": base64.b64encode(body).decode(), **dict(parse_qsl(query))}).encode()
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(dict(scope, headers=headers), replay, send)


def explain_validation_error(schemas: dict[str, type[BaseModel]]):
    """A FastAPI handler for ``RequestValidationError`` on the routes of ``schemas`` (path -> schema):
    422 with one readable sentence per problem (an unknown option names the options there are)."""

    async def handler(request: Request, exc: RequestValidationError) -> JSONResponse:
        schema = schemas.get(request.url.path)
        options = ", ".join(schema.model_fields) if schema else ""
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"] if part != "body")
            if error["type"] == "extra_forbidden":
                problems.append(f"unknown option {where!r}; the options are {options}")
            elif error["type"] == "json_invalid":
                problems.append(f"the body is neither an image file nor valid JSON ({error.get('ctx', {}).get('error', '')})")
            elif error["type"] == "missing":
                problems.append(f"{where or 'the body'} is missing" + (" (the image file, base64)" if where == "image" else ""))
            else:
                problems.append(f"{where or 'the body'}: {error['msg']}")
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    return handler
