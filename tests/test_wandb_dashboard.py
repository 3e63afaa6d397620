"""The W&B dashboard as code, offline: every panel of the spec names a key that a real offline training
run (or evaluation run, for the report) logs, read back from the runs' own transaction logs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from PIL import Image

from experiments import wandb_dashboard
from nrp_lightning.config import compose
from nrp_lightning.train import train
from test_train import TINY


def logged_keys(run_dir: Path) -> dict[str, set[str]]:
    """History, summary, media, table and (dotted) config keys of the offline W&B run in ``run_dir``,
    from its ``.wandb`` transaction log (``wandb leet inspect``, W&B's own reader)."""
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))[-1]
    leet = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"]
    records = subprocess.run([*leet, str(offline)], capture_output=True, text=True, check=True, timeout=120).stdout
    run = json.loads(subprocess.run([*leet, "--summary", str(offline)], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)
    history = {k for line in records.splitlines() if (r := json.loads(line))["type"] == "history"
               for k in r["history"]["item"]}

    def dotted(tree: dict, prefix: str = "") -> set[str]:
        return {key for k, v in tree.items()
                for key in (dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"})}

    summary = run["summary"]
    typed = {k: v.get("_type", "") for k, v in summary.items() if isinstance(v, dict)}
    return {"history": history, "summary": set(summary), "config": dotted(run["config"]), "tags": set(run["tags"]),
            "media": {k for k, t in typed.items() if t.startswith("image")},
            "tables": {k for k, t in typed.items() if t == "table-file"}}


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> dict[str, set[str]]:
    """A tiny real training run (experiment=demo, 2 iterations, a validation each) logging to W&B offline."""
    run_dir = tmp_path_factory.mktemp("train")
    cfg = compose(TINY + ["steps=2", "val_every=1", "trainer.log_every_n_steps=1", "logger=wandb",
                          "ablation=no_pixel"], run_dir=str(run_dir))
    try:
        train(cfg)
    finally:
        wandb.finish()
    return logged_keys(run_dir)


@pytest.fixture(scope="module")
def evaluation_run(tmp_path_factory) -> dict[str, set[str]]:
    """An evaluation run's W&B logging (``evaluation.plots.log_to_wandb``, offline) of one row and both figures."""
    from nrp_lightning.evaluation.plots import log_to_wandb

    out = tmp_path_factory.mktemp("eval")
    for name in ("accuracy_vs_eps.png", "samples.png"):
        Image.new("RGB", (8, 8)).save(out / name)
    log_to_wandb([{"kind": "clean", "defense": "NRP", "victim": "tiny", "top1": 50.0}], out, project="nrp-eval",
                 name="eval-test", mode="offline")
    return logged_keys(out)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    """The command, offline, with any W&B API call turned into a failure."""
    out = tmp_path_factory.mktemp("dashboard")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setattr(wandb, "Api", lambda *a, **k: pytest.fail("the offline dashboard called the W&B API"))
        assert wandb_dashboard.main(["me/nrp-lightning", "--group", "demo-sweep", "--eval-project", "me/nrp-eval",
                                     "--eval-run", "eval-test", "--spec-out", str(out / "spec.json"),
                                     "--render", str(out / "dashboard.png")]) == 0
    assert (out / "dashboard.png").stat().st_size > 10_000
    return json.loads((out / "spec.json").read_text())


def test_every_workspace_panel_reads_a_key_the_training_run_logs(spec, training_run):
    panels = [p for s in spec["workspace"]["sections"] for p in s["panels"]]
    types = {p["type"] for p in panels}
    assert {"LinePlot", "MediaBrowser", "ParallelCoordinatesPlot", "RunComparer"} <= types
    missing = {kind: sorted(set(keys) - training_run[kind]) for p in panels for kind, keys in p["keys"].items()}
    assert not any(missing.values()), missing
    plotted = {k for p in panels for k in p["keys"].get("history", [])}
    losses = {k for k in training_run["history"] if k.startswith("train/loss_")}
    assert losses <= plotted and len(losses) >= 4  # each loss term the run logs has its panel
    assert {"val/feat_dist_purified", "val/psnr_purified", "val/feat_dist_adv", "val/attack_share"} <= plotted
    assert "val/samples" in training_run["media"]
    compare = next(p for p in panels if p["type"] == "ParallelCoordinatesPlot")["keys"]
    assert compare["config"] == ["choices.ablation", "choices.attack", "choices.backbone"]
    # grouped by the ablation: the run's config says the same as its tag
    assert spec["workspace"]["groupby"]["config"] == ["choices.ablation"]
    assert {"choices.ablation", "choices.attack", "choices.backbone"} <= training_run["config"]
    assert "ablation=no_pixel" in training_run["tags"]


def test_the_uploaded_view_is_built_offline_and_names_the_same_keys(spec):
    view = spec["workspace"]["view"]
    assert view["entity"] == "me" and view["project"] == "nrp-lightning"
    text = json.dumps(view)
    for section in spec["workspace"]["sections"]:
        for panel in section["panels"]:
            for keys in panel["keys"].values():
                assert all(json.dumps(k) in text or f"config:{k.split('.')[0]}.value." in text for k in keys), keys
    runset = view["spec"]["section"]["runSets"][0]
    assert runset["grouping"] == [{"section": "config", "name": "choices.value.ablation"}]
    assert runset["filters"]["filters"] == [{"key": {"section": "run", "name": "group"}, "op": "=",
                                             "value": "demo-sweep", "disabled": False}]


def test_the_report_shows_what_an_evaluation_run_logs(spec, evaluation_run):
    report = spec["report"]
    assert (report["entity"], report["project"]) == ("me", "nrp-eval")
    assert [p["type"] for p in report["panels"]] == ["WeavePanelSummaryTable", "MediaBrowser", "MediaBrowser"]
    missing = {kind: sorted(set(keys) - evaluation_run[kind])
               for p in report["panels"] for kind, keys in p["keys"].items()}
    assert not any(missing.values()), missing
    assert report["filters"] == ["Metric(\"Name\") == 'eval-test'"]


def test_a_project_without_an_entity_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        wandb_dashboard.main(["nrp-lightning"])
    assert info.value.code == 2 and "expected ENTITY/PROJECT" in capsys.readouterr().err
