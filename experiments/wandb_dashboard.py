"""The W&B dashboard for comparing training runs, as code: a saved workspace and an evaluation report.

    python experiments/wandb_dashboard.py ENTITY/PROJECT [--group SWEEP] [--eval-project ENTITY/PROJECT]
        [--eval-run NAME] [--spec-out FILE] [--render PNG]

The workspace (``wandb_workspaces.workspaces``) shows the runs of PROJECT (of one sweep with
``--group``: every job of a Hydra multirun shares the sweep folder's group), grouped by their
ablation (config ``choices.ablation``, which ``conf/logger/wandb.yaml`` logs beside the tags):
line panels of the feature distance and PSNR after purification against the adversarial inputs'
as reference, one per loss term, the training attack's strength (``val/attack_share``) and the
gradient norms; the ``val/samples`` media panel (clean / adversarial / purified rows); a
parallel-coordinates panel over ablation, attack, backbone and the final metrics, and a run
comparer. The report (``wandb_workspaces.reports.v2``) shows an evaluation run's ``results``
table and its two figures (``python eval.py ... logger='{project: nrp-eval, name: NAME}'``).

Online (an API key and the network, see ``nrp_lightning.loggers.wandb_mode``) both are saved and
their URLs printed. Offline (``WANDB_MODE=offline``, no key, no network: CI and a laptop on a
train) nothing is sent: the objects are built and their spec written as JSON (``--spec-out``,
default ``outputs/wandb_dashboard.json``): the workspace as the exact view ``save()`` uploads, the
report as the objects built (turning a report's run set into the uploaded form asks the server for
the project's internal id, so that step waits for ``save()``). ``--render`` draws the spec.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from pydantic import TypeAdapter
from wandb_workspaces import expr

from nrp_lightning.loggers import wandb_mode

STEP = "trainer/global_step"  # Lightning's WandbLogger plots every metric against it
GROUP_BY = "choices.ablation"
# (title, history keys): the first key is what a panel is about, the others its reference
PURIFICATION = [("Feature distance after purification (adversarial as reference)",
                 ["val/feat_dist_purified", "val/feat_dist_adv"]),
                ("PSNR after purification (dB; adversarial as reference)", ["val/psnr_purified", "val/psnr_adv"])]
LOSS_TERMS = ["train/loss_purifier", "train/loss_adv", "train/loss_img", "train/loss_feat", "train/loss_critic"]
ATTACK = [("Training attack strength (1.0 = the authors' SSP)", ["val/attack_share", "val/val_attack_share"])]
STABILITY = [("Gradient norms", ["train/grad_norm_purifier", "train/grad_norm_critic"]),
             ("Skipped non-finite steps", ["train/nonfinite_steps"])]
SAMPLES = "val/samples"
COMPARE_CONFIG = ["choices.ablation", "choices.attack", "choices.backbone"]
COMPARE_SUMMARY = ["val/feat_dist_purified", "val/psnr_purified", "val/feat_dist_adv", "val/attack_share"]
EVAL_TABLE, EVAL_FIGURES = "results", ["accuracy_vs_eps", "samples"]  # evaluation.plots.log_to_wandb
DEFAULT_SPEC = Path("outputs/wandb_dashboard.json")


def line(title: str, keys: list[str]) -> wr.LinePlot:
    return wr.LinePlot(title=title, x=STEP, y=keys, title_x="step")


def workspace(entity: str, project: str, group: str | None = None) -> ws.Workspace:
    """The comparison workspace of ``entity/project`` (one sweep with ``group``)."""
    compare = wr.ParallelCoordinatesPlot(
        title="Ablation, attack, backbone -> final metrics",
        columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k), display_name=k.split(".")[-1])
                 for k in COMPARE_CONFIG]
        + [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(k), display_name=k) for k in COMPARE_SUMMARY])
    sections = [
        ws.Section(name="Purification", is_open=True, panels=[line(t, k) for t, k in PURIFICATION]),
        ws.Section(name="Samples (rows: clean / adversarial / purified)", is_open=True,
                   panels=[wr.MediaBrowser(title=SAMPLES, media_keys=[SAMPLES], num_columns=4)]),
        ws.Section(name="Comparison", is_open=True, panels=[compare, wr.RunComparer(diff_only="split")]),
        ws.Section(name="Loss terms", is_open=True, panels=[line(k, [k]) for k in LOSS_TERMS]),
        ws.Section(name="Attack and stability", panels=[line(t, k) for t, k in ATTACK + STABILITY]),
    ]
    runs = ws.RunsetSettings(
        groupby=[expr.Config(GROUP_BY)], filters=[expr.Metric("Group") == group] if group else "",
        pinned_columns=[f"config:{k}.value" for k in COMPARE_CONFIG] + [f"summary:{k}" for k in COMPARE_SUMMARY])
    return ws.Workspace(entity=entity, project=project, name=f"NRP ablations{f' ({group})' if group else ''}",
                        sections=sections, runset_settings=runs,
                        settings=ws.WorkspaceSettings(x_axis=STEP, max_runs=20))


def eval_report(entity: str, project: str, run: str | None = None) -> wr.Report:
    """The report of an evaluation run of ``entity/project`` (the newest first; ``run``: that name)."""
    runs = wr.Runset(entity=entity, project=project, name="evaluation",
                     filters=[expr.Metric("Name") == run] if run else "")
    return wr.Report(
        entity=entity, project=project, title=f"NRP evaluation{f': {run}' if run else ''}",
        description="Top-1 and attack success of every victim behind every defence, with the figures.",
        blocks=[wr.H1("Results"),
                wr.P("Rows of results.jsonl as logged by nrp-eval: one per attack, budget, defence and victim."),
                wr.PanelGrid(runsets=[runs], panels=[
                    wr.WeavePanelSummaryTable(table_name=EVAL_TABLE, layout=wr.Layout(x=0, y=0, w=24, h=12)),
                    *[wr.MediaBrowser(title=k, media_keys=[k], layout=wr.Layout(x=12 * i, y=12, w=12, h=10))
                      for i, k in enumerate(EVAL_FIGURES)]])])


def panel_keys(panel: Any) -> dict[str, list[str]]:
    """What a panel reads from a run: ``history``, ``summary`` and ``config`` keys, ``media``, ``tables``."""
    if isinstance(panel, wr.LinePlot):
        return {"history": [panel.x, *panel.y]}
    if isinstance(panel, wr.MediaBrowser):
        return {"media": list(panel.media_keys)}
    if isinstance(panel, wr.ParallelCoordinatesPlot):
        columns = [c.metric for c in panel.columns]
        return {"config": [m.name for m in columns if isinstance(m, wr.Config)],
                "summary": [m.name for m in columns if isinstance(m, wr.SummaryMetric)]}
    if isinstance(panel, wr.WeavePanelSummaryTable):
        return {"tables": [panel.table_name]}
    return {}  # a run comparer shows every config and summary key


def describe(panel: Any) -> dict[str, Any]:
    return {"type": type(panel).__name__, "title": getattr(panel, "title", None), "keys": panel_keys(panel)}


def spec(space: ws.Workspace, report: wr.Report, group: str | None = None) -> dict[str, Any]:
    """The JSON-able spec of both: what each panel reads, and the objects themselves."""
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    return {
        "workspace": {
            "entity": space.entity, "project": space.project, "name": space.name, "group": group,
            "groupby": {"config": [GROUP_BY]}, "filters": space.runset_settings.filters,
            "sections": [{"name": s.name, "panels": [describe(p) for p in s.panels]} for s in space.sections],
            "view": space._to_model().model_dump(mode="json", by_alias=True, exclude_none=True),
        },
        "report": {
            "entity": report.entity, "project": report.project, "title": report.title,
            "filters": [rs.filters for g in grids for rs in g.runsets],
            "panels": [describe(p) for g in grids for p in g.panels],
            "objects": TypeAdapter(wr.Report).dump_python(report, mode="json"),
        },
    }


def render(dashboard: dict[str, Any], path: Path) -> Path:
    """A drawing of the spec (not a screenshot): each section a row of boxes naming the panel and its keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(s["name"], s["panels"]) for s in dashboard["workspace"]["sections"]]
    rows.append((f"Report: {dashboard['report']['title']}", dashboard["report"]["panels"]))
    width, pitch = max(len(p) for _, p in rows), 1.8  # panels per row at most; height of a row
    fig, ax = plt.subplots(figsize=(3.3 * width, 1.9 * len(rows) + 0.9))
    ax.set(xlim=(0, width), ylim=(len(rows) * pitch + 0.1, -0.7))
    ax.axis("off")
    space = dashboard["workspace"]
    ax.text(0, -0.45, f"W&B workspace '{space['name']}' of {space['entity']}/{space['project']}, runs grouped by "
            f"config {GROUP_BY}: a rendering of the spec written by wandb_dashboard.py, not a screenshot",
            fontsize=10, weight="bold")
    colours = {"LinePlot": "#dbe9f6", "MediaBrowser": "#f6e7d2", "ParallelCoordinatesPlot": "#e1f2dc",
               "RunComparer": "#eeeeee", "WeavePanelSummaryTable": "#efe0f3"}
    for i, (name, panels) in enumerate(rows):
        top = i * pitch
        ax.text(0, top + 0.05, name, fontsize=9, weight="bold", va="top")
        for j, panel in enumerate(panels):
            ax.add_patch(plt.Rectangle((j + 0.03, top + 0.25), 0.94, pitch - 0.35,
                                       color=colours.get(panel["type"], "#eee")))
            keys = [k for kind in panel["keys"].values() for k in kind if k != STEP]
            title = textwrap.shorten(panel["title"] or "", 80, placeholder="...")
            ax.text(j + 0.08, top + 0.3, "\n".join(textwrap.wrap(title, 40)[:2]), fontsize=7, va="top",
                    weight="bold")
            ax.text(j + 0.08, top + 0.62, "\n".join([panel["type"], *keys]), fontsize=6.5, va="top",
                    family="monospace")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def entity_project(text: str) -> tuple[str, str]:
    entity, _, project = text.partition("/")
    if not entity or not project or "/" in project:
        raise argparse.ArgumentTypeError(f"expected ENTITY/PROJECT (e.g. my-team/nrp-lightning), got {text!r}")
    return entity, project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", type=entity_project, help="ENTITY/PROJECT of the training runs")
    parser.add_argument("--group", help="only the runs of this W&B group (a sweep: its folder, e.g. "
                                        "demo-2026-11-24_14-07-24)")
    parser.add_argument("--eval-project", type=entity_project, help="ENTITY/PROJECT of the evaluation runs "
                                                                    "(default: the training project)")
    parser.add_argument("--eval-run", help="the evaluation run's name (default: every run of that project)")
    parser.add_argument("--spec-out", type=Path, help=f"write the spec here (offline default: {DEFAULT_SPEC})")
    parser.add_argument("--render", type=Path, help="also draw the spec into this PNG")
    args = parser.parse_args(argv)
    entity, project = args.project
    space = workspace(entity, project, args.group)
    report = eval_report(*(args.eval_project or args.project), args.eval_run)
    dashboard = spec(space, report, args.group)
    online = wandb_mode() == "online"
    spec_out = args.spec_out or (None if online else DEFAULT_SPEC)
    if spec_out:
        spec_out.parent.mkdir(parents=True, exist_ok=True)
        spec_out.write_text(json.dumps(dashboard, indent=1) + "\n")
        print(f"wrote the dashboard spec to {spec_out}")
    if args.render:
        print(f"drew it into {render(dashboard, args.render)}")
    if online:
        print(f"workspace: {space.save().url}")
        print(f"report: {report.save().url}")
    else:
        print("offline (WANDB_MODE=offline, or no API key or network): nothing was sent to W&B; run it again "
              "online to save the workspace and the report", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
