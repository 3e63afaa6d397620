"""Purifiers that travel: safetensors, the Hugging Face Hub folder (local, and hf:ORG/NAME through the
Hub's cache, offline) and torch.hub, each bit for bit; .pth keeps weights_only=True."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from huggingface_hub import constants

from nrp_lightning.cli_purify import purify_main
from nrp_lightning.export import format_for
from nrp_lightning.defenses.nrp import load_gate
from nrp_lightning.gate import GateSpec
from nrp_lightning.hub import save_safetensors
from nrp_lightning.models.purifier import RRDBPurifier
from nrp_lightning.purify import (CARD_KEY, DEFAULT_PURIFIER, HUB_FILES, PurifierLoadError, load_purifier,
                                  purify_images)
from nrp_lightning.weights import safetensors_metadata
from test_train import ROOT

SHIPPED_CARD = json.loads(DEFAULT_PURIFIER.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def shipped():
    return load_purifier()


def assert_bit_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    x = torch.rand(1, 3, 24, 24)
    assert torch.equal(purify_images(a, x), purify_images(b, x))


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """The shipped purifier's Hub folder, written by the one command a user runs."""
    folder = tmp_path_factory.mktemp("hub") / "nrp_cpu"
    assert purify_main(["export", str(folder)]) == 0
    return folder


def test_safetensors_round_trip_is_bit_identical_and_carries_the_card(shipped, tmp_path):
    path = tmp_path / "nrp_cpu.safetensors"
    assert purify_main(["export", str(path), "--format", "safetensors"]) == 0
    loaded = load_purifier(path)
    assert_bit_identical(shipped, loaded)
    assert loaded.spec == shipped.spec and loaded.path == path
    meta = safetensors_metadata(path)
    assert meta["architecture"] == "rrdb purifier (nf=32 nb=2 gc=16)"
    assert json.loads(meta[CARD_KEY]) == SHIPPED_CARD == loaded.card
    assert not path.with_suffix(".json").exists()  # the gate is read from the card inside the file
    assert load_gate(loaded).threshold == SHIPPED_CARD["gate"]["threshold"]
    # the authors' key layout, as in the .pth: readable without this package
    from safetensors.torch import load_file

    assert sorted(load_file(path)) == sorted(torch.load(DEFAULT_PURIFIER, weights_only=True))


def test_the_shipped_purifiers_hub_folder_from_one_command(shipped, hub_folder):
    assert sorted(p.name for p in hub_folder.iterdir()) == sorted(HUB_FILES)
    config = json.loads((hub_folder / "config.json").read_text())
    assert [config[k] for k in ("arch", "nf", "nb", "gc")] == ["rrdb", 32, 2, 16]
    readme = (hub_folder / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: nrp-lightning\n")
    assert SHIPPED_CARD["training_command"] in readme
    row = next(r for r in SHIPPED_CARD["heldout_evaluation"]["rows"]
               if r["kind"] == "transfer" and r["defense"] == "NRP")  # one measured cell of the table
    assert f"| transfer | {row['attack']} | {row['source']} | {row['eps']:g} | {row['victim']} | {row['n']} |" in readme
    assert f" {row['top1']:.1f} " in readme
    loaded = load_purifier(hub_folder)
    assert_bit_identical(shipped, loaded)
    assert loaded.card == SHIPPED_CARD
    assert GateSpec.from_metadata(loaded.path.with_suffix(".json")) == GateSpec.from_metadata(
        DEFAULT_PURIFIER.with_suffix(".json"))  # the calibrated gate travels with the folder


def test_a_hub_folder_whose_config_disagrees_with_its_weights_is_refused(hub_folder, tmp_path):
    folder = shutil.copytree(hub_folder, tmp_path / "edited")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "nb": 23}))
    with pytest.raises(PurifierLoadError, match="says rrdb purifier \\(nf=32 nb=23 gc=16\\) but .* holds a rrdb "
                                                 "purifier \\(nf=32 nb=2 gc=16\\)"):
        load_purifier(folder)
    with pytest.raises(PurifierLoadError, match="is a folder without model.safetensors"):
        load_purifier(tmp_path)


def _hub_cache(root, repo: str, folder, commit: str = "0123456789abcdef0123456789abcdef01234567") -> None:
    """The Hub cache's layout for one downloaded snapshot (what `hf download` leaves behind)."""
    entry = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)


def test_hf_reference_reads_the_hub_cache_offline_and_says_when_it_is_not_there(shipped, hub_folder, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # nothing may download
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    _hub_cache(tmp_path / "hub-cache", "someone/nrp-cpu", hub_folder)
    loaded = load_purifier("hf:someone/nrp-cpu")
    assert_bit_identical(shipped, loaded)
    assert loaded.card == SHIPPED_CARD
    with pytest.raises(PurifierLoadError) as info:
        load_purifier("hf:someone/not-downloaded")
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE=1 forbids downloading it" in message
    assert message.startswith(f"hf:someone/not-downloaded is not in the Hugging Face cache {tmp_path / 'hub-cache'}")


def test_torch_hub_local_gives_the_shipped_purifiers(shipped):
    assert_bit_identical(shipped, torch.hub.load(str(ROOT), "nrp_cpu", source="local"))
    for name in ("nrp_cpu_ssp", "nrp_real"):
        from_hub = torch.hub.load(str(ROOT), name, source="local")
        assert_bit_identical(load_purifier(DEFAULT_PURIFIER.with_name(f"{name}.pth")), from_hub)
        assert from_hub.card["file"] == f"{name}.pth"


def test_a_shipped_purifier_loads_by_its_bare_name_unless_a_file_has_that_name(tmp_path, monkeypatch):
    """``--checkpoint nrp_real`` names the package's ``nrp_real.pth``; a file or folder called so in the
    working directory comes first, and an unknown bare name is an error naming it."""
    monkeypatch.chdir(tmp_path)
    assert load_purifier("nrp_real").path == DEFAULT_PURIFIER.with_name("nrp_real.pth")
    (tmp_path / "nrp_real").write_bytes(b"not a purifier")
    with pytest.raises(PurifierLoadError, match="nrp_real"):
        load_purifier("nrp_real")
    with pytest.raises(PurifierLoadError, match="nrp_nothing"):
        load_purifier("nrp_nothing")


class _RunsCode:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pth_files_still_load_with_weights_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"conv_first.weight": torch.zeros(1), "payload": _RunsCode()}, tmp_path / "evil.pth")
    with pytest.raises(PurifierLoadError, match="weights_only=True refuses"):
        load_purifier(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(PurifierLoadError, match="text.safetensors is not a safetensors file"):
        load_purifier(tmp_path / "text.safetensors")


def test_cardless_purifiers_travel_too(tmp_path):
    purifier = RRDBPurifier(8, 1, 4).eval()
    torch.save(purifier.state_dict(), tmp_path / "tiny.pth")
    tiny = load_purifier(tmp_path / "tiny.pth")
    assert tiny.card is None
    loaded = load_purifier(save_safetensors(tiny, tmp_path / "tiny.safetensors"))
    assert loaded.card is None
    assert_bit_identical(tiny, loaded)
    assert purify_main(["export", str(tmp_path / "tiny.pth"), str(tmp_path / "folder"), "--format", "hub"]) == 0
    assert "No measurement is recorded" in (tmp_path / "folder" / "README.md").read_text()
    assert_bit_identical(tiny, load_purifier(tmp_path / "folder"))


def test_export_format_from_the_name():
    assert [format_for(n) for n in ("p.safetensors", "hub/nrp_cpu", "p.onnx")] == ["safetensors", "hub", "onnx"]
