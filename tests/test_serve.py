"""nrp-serve over real HTTP on 127.0.0.1 (one server for the session, see conftest.served), and its
LitAPIs called directly where a case must be made deterministic (a bad request inside a batch)."""
from __future__ import annotations

import base64
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from conftest import SERVED_MAX_PIXELS
from nrp_lightning.eval_data import center_square
from nrp_lightning.images import array_to_tensor, decode_image, png_bytes, to_uint8
from nrp_lightning.purify import load_purifier, purify_images
from nrp_lightning.serve.client import get, post

pytestmark = pytest.mark.timeout(900)
ATTACK_TIMEOUT = 600  # s: an attack on a 2-core CPU that a training run shares


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A 40x48 crop of chelsea, (3, H, W) in [0, 1] on 8-bit levels."""
    return center_square(array_to_tensor(skimage.data.chelsea()), 64)[:, 10:50, 8:56]


def png_of(answer) -> torch.Tensor:
    assert answer.status == 200, answer.body[:300]
    assert answer.content_type == "image/png"
    return decode_image(answer.body)


def expected_png(x: torch.Tensor, **kwargs) -> np.ndarray:
    return to_uint8(purify_images(load_purifier(), x[None], **kwargs)[0])


def test_health(served):
    answer = get(served + "/health")
    assert (answer.status, answer.body) == (200, b"ok")


def test_purify_raw_png_is_purify_images(served, photo):
    out = png_of(post(served + "/purify", png_bytes(photo), "image/png"))
    assert out.shape == photo.shape  # same size
    assert np.array_equal(to_uint8(out), expected_png(photo))


def test_purify_json_dynamic_seed_is_purify_images(served, photo):
    body = json.dumps({"image": base64.b64encode(png_bytes(photo)).decode(), "dynamic": True, "seed": 7}).encode()
    out = png_of(post(served + "/purify", body, "application/json"))
    assert np.array_equal(to_uint8(out), expected_png(photo, dynamic=True, generator=torch.Generator().manual_seed(7)))
    # the same options as a raw body with a query string give the same PNG; another seed another one
    again = png_of(post(served + "/purify?dynamic=true&seed=7", png_bytes(photo)))
    other = png_of(post(served + "/purify?dynamic=true&seed=8", png_bytes(photo)))
    assert torch.equal(out, again) and not torch.equal(out, other)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_purify_odd_modes_and_jpeg(served, photo, mode):
    """Grayscale, RGBA and 16-bit files come back as RGB PNGs of their size (images.py's conversions)."""
    rgb = Image.fromarray(to_uint8(photo))
    img = rgb.convert("L").convert("I;16") if mode == "I;16" else rgb.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert png_of(post(served + "/purify", buf.getvalue())).shape == photo.shape
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    assert png_of(post(served + "/purify", buf.getvalue(), "image/jpeg")).shape == photo.shape


def test_predict_top5_given_and_purified(served):
    cat = center_square(array_to_tensor(skimage.data.chelsea()), 224)
    answer = post(served + "/predict?return_purified=true", png_bytes(cat))
    assert answer.status == 200, answer.body
    result = answer.json()
    assert result["classifier"] == "mobilenet_v2"
    for key in ("given", "purified"):
        top = result[key]
        assert len(top) == 5 and all(isinstance(t["label"], str) and 0 <= t["class"] < 1000 for t in top)
        assert [t["p"] for t in top] == sorted((t["p"] for t in top), reverse=True)
    assert result["given"][0]["class"] in range(281, 286)  # a domestic cat (tabby, tiger cat, ...)
    purified = decode_image(base64.b64decode(result["purified_png"]))
    assert purified.shape == cat.shape
    assert np.array_equal(to_uint8(purified), expected_png(cat))
    only_given = post(served + "/predict?purify=false", png_bytes(cat)).json()
    assert only_given["given"] == result["given"] and "purified" not in only_given


def _truncated_png() -> bytes:
    data = png_bytes(torch.rand(3, 64, 64))
    return data[: len(data) // 2]


def _huge_png() -> bytes:
    return png_bytes(torch.zeros(3, 500, SERVED_MAX_PIXELS // 500 + 1))  # a few KB, one pixel column too many


BAD_REQUESTS = {
    "not an image": ("/purify", b"hello, this is text", "text/plain", 400, "not an image"),
    "truncated": ("/purify", _truncated_png(), "image/png", 400, "cannot decode"),
    "empty": ("/purify", b"", "image/png", 400, "empty"),
    "too many pixels": ("/purify", _huge_png(), "image/png", 413, "more than the 300000 allowed"),
    "body too large": ("/purify", bytes(5_000_000), "image/png", 413, "bytes, the most this server takes"),
    "unknown option": ("/purify?sharpen=1", png_bytes(torch.rand(3, 8, 8)), "image/png", 422, "unknown option 'sharpen'"),
    "wrong type": ("/purify?seed=abc", png_bytes(torch.rand(3, 8, 8)), "image/png", 422, "seed"),
    "bad base64": ("/predict", b'{"image": "***"}', "application/json", 400, "not valid base64"),
    "invalid JSON": ("/purify", b'{"image": ', "application/json", 422, "neither an image file nor valid JSON"),
    "no image": ("/predict", b'{"dynamic": true}', "application/json", 422, "image is missing"),
    "JSON and query": ("/purify?seed=1", b'{"image": ""}', "application/json", 400, "options go in the JSON body"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_4xx_json_and_server_keeps_serving(served, photo, case):
    route, body, content_type, status, words = BAD_REQUESTS[case]
    answer = post(served + route, body, content_type)
    assert answer.status == status, answer.body[:300]
    assert answer.content_type == "application/json"
    assert words in answer.json()["detail"]
    assert png_of(post(served + "/purify", png_bytes(photo))).shape == photo.shape  # still serving


def test_a_refused_large_body_gets_its_413_every_time(served):
    """The server reads and drops the rest of a body it refuses: answering first made it close a socket
    with unread bytes, and the client saw a reset instead of the 413 (3 of 40 tries on a loaded CPU)."""
    for _ in range(10):
        answer = post(served + "/purify", bytes(5_000_000), "image/png")
        assert answer.status == 413 and "the most this server takes" in answer.json()["detail"]


def test_concurrent_requests_with_a_bad_one(served, photo):
    """Requests that arrive together (batched up to 4 within 50 ms) each get their own answer."""
    bodies = [png_bytes(photo), b"not an image", png_bytes(photo.flip(-1)), png_bytes(photo[:, :32, :32])]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: post(served + "/purify", b), bodies))
    assert [a.status for a in answers] == [200, 400, 200, 200]
    assert np.array_equal(to_uint8(png_of(answers[2])), expected_png(photo.flip(-1)))
    assert png_of(answers[3]).shape == (3, 32, 32)


def test_a_bad_request_does_not_fail_its_batch(photo):
    """LitServe fails a whole batch when one request raises (Lightning-AI/LitServe#340): a bad image
    must come back as its own 400 and its batch mates as their PNGs. Called the way LitServe's batched
    loop calls the API: decode each, batch, predict, unbatch, encode each."""
    from nrp_lightning.serve.apis import PurifyAPI
    from nrp_lightning.serve.protocol import PurifyRequest

    api = PurifyAPI(None, 10_000, max_batch_size=4)
    api.setup("cpu")
    files = [png_bytes(photo), b"\x89PNG broken", png_bytes(photo[:, :20, :20])]
    inputs = [api.decode_request(PurifyRequest(image=base64.b64encode(f).decode())) for f in files]
    api.pre_setup()  # what LitServer does before the workers start: sets the default unbatch
    responses = [api.encode_response(y) for y in api.unbatch(api.predict(api.batch(inputs)))]
    assert [r.status_code for r in responses] == [200, 400, 200]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(responses[0].body))), expected_png(photo))
    assert "not an image" in json.loads(responses[1].body)["detail"]


@pytest.mark.parametrize("attack,source", [("mifgsm", "mobilenet_v2"), ("ssp", "mobilenet_v2")])
def test_attack_stays_within_eps(served, photo, attack, source):
    answer = post(served + f"/attack?attack={attack}&eps=8&source={source}", png_bytes(photo), timeout=ATTACK_TIMEOUT)
    adversarial = png_of(answer)
    assert adversarial.shape == photo.shape
    change = (adversarial - photo).abs().max().item()
    assert 0 < change <= 8 / 255 + 1e-6


def test_attack_refuses_unknown_source(served, photo):
    answer = post(served + "/attack?attack=ssp&source=vgg16", png_bytes(photo), timeout=ATTACK_TIMEOUT)
    assert answer.status == 400 and "SSP's source must be one of" in answer.json()["detail"]


def test_page_routes(served):
    page = get(served + "/demo")
    assert page.status == 200 and b"Neural Representation Purifier" in page.body
    options = json.loads(get(served + "/demo/options").body)
    assert options["victim"] == "mobilenet_v2" and set(options["attacks"]) == {"ssp", "mifgsm", "dim"}
    defaults = options["defaults"]  # the page opens on a transfer attack: crafted on another model than the victim
    assert defaults["source"] != options["victim"] and defaults["source"] in options["attacks"][defaults["attack"]]["sources"]
    assert defaults["example"] in options["examples"]
    example = get(served + "/demo/examples/chelsea.png")
    assert example.status == 200 and decode_image(example.body).shape == (3, 300, 451)
    assert get(served + "/demo/examples/nope.png").status == 404


def test_load_test_loses_no_request(served):
    """benchmarks/serve_load.py's client loop, briefly, against the session's server."""
    sys.path.insert(0, "benchmarks")
    try:
        from serve_load import run_load
    finally:
        sys.path.remove("benchmarks")
    result = run_load(served, png_bytes(center_square(array_to_tensor(skimage.data.chelsea()), 64)), clients=4,
                      seconds=3)
    assert result.failures == [] and result.sent >= 4


@pytest.mark.parametrize("args,words", [
    (["--accelerator", "cuda"], "no CUDA device is available"),
    (["--checkpoint", "README.md"], "README.md is not a PyTorch file"),
    (["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
])
def test_usage_errors_exit_2(args, words, capsys):
    """Refused in the parent process, before any worker starts."""
    from nrp_lightning.serve.cli import serve_main

    if args[:2] == ["--accelerator", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        serve_main(args)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err
