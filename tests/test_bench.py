"""Smoke run of benchmarks/bench.py at tiny sizes: every code path runs, the JSON has its schema and
the last line its format. Not a timing test: no number is checked against a target."""
import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# What `python benchmarks/bench.py` puts first on sys.path: the script's folder, home of nrp_bench.
sys.path.insert(0, str(ROOT / "benchmarks"))

from nrp_bench.flops import measure_bf16_peak_tflops, mfu  # noqa: E402
from nrp_bench.profiles import VARIANTS  # noqa: E402

LAST_LINE = re.compile(r"^bench: device=(cpu|.+) step_overhead_ratio=\d+\.\d{3} step_s=[0-9.e+-]+ "
                       r"mfu=(na|\d\.\d{3}) purify_224_img_per_s=[0-9.e+-]+$")
PART_KEYS = {"median_s", "min_s", "reps", "flops", "summed", "host_peak_mib", "host_delta_mib", "device_peak_mib"}
STEP_KEYS = {"step_s", "min_step_s", "first_step_s", "between_steps_s", "loader_share", "flops",
             "host_syncs_in_step", "host_peak_mib", "device_peak_mib", "mfu"}


@pytest.fixture(scope="module")
def bench():
    import bench

    return bench


def test_quick_benchmark_writes_its_json_table_and_last_line(bench, tmp_path, capsys):
    # One thread: tiny ops gain nothing from two, and one thread is not slowed down as much when
    # other processes share the CPUs.
    result = bench.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert LAST_LINE.match(lines[-1]), lines[-1]
    assert lines[-1].startswith("bench: device=cpu ") and " mfu=na " in lines[-1]

    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["schema"] == bench.SCHEMA == result["schema"]
    assert {"cpu", "logical_cpus", "torch_threads", "torch", "device", "other_processes_cpu_share"} <= set(saved["machine"])
    assert saved["peak_bf16_matmul_tflops"] == "na"

    step = saved["step"]
    summed = {"features_clean", "ssp", "generator_step", "critic_step", "metrics"}
    assert summed | {"ssp_1_iteration", "purifier_fwd_bwd", "feature_loss_fwd_bwd"} == set(step["parts"])
    for name, part in step["parts"].items():
        assert PART_KEYS <= set(part), name
        assert part["summed"] == (name in summed)
        assert part["median_s"] > 0 and part["reps"] == 2 and part["flops"] > 0 and part["device_peak_mib"] == "na"
    assert step["sum_of_parts_s"] == pytest.approx(sum(step["parts"][n]["median_s"] for n in summed))
    assert STEP_KEYS <= set(step["whole"])
    assert step["step_overhead_ratio"] == pytest.approx(step["whole"]["step_s"] / step["sum_of_parts_s"])
    # One SSP iteration costs less than the whole attack; the step does at least the parts' FLOPs.
    assert step["parts"]["ssp_1_iteration"]["flops"] < step["parts"]["ssp"]["flops"]
    assert step["whole"]["flops"] >= sum(step["parts"][n]["flops"] for n in summed) * 0.99

    assert set(saved["variants"]) == {"fp32", "act_ckpt"}
    assert all(STEP_KEYS <= set(v) | {"mfu"} and "compile_s" in v for v in saved["variants"].values())
    assert {r["axis"] for r in saved["scaling"]} == {"batch", "crop", "ssp_steps"}
    assert "skipped" in saved["full_step"]
    assert saved["purify_224"]["img_per_s"] > 0 and saved["purify_224"]["size"] == 224
    assert saved["photo"]["seconds"] > 0 and saved["photo"]["tiling"].startswith("nrp_lightning.tiling")
    assert (tmp_path / "bench.md").read_text().rstrip().endswith(lines[-1])


def test_variants_map_to_the_module_switches():
    fast = VARIANTS["fast"]
    assert fast.precision == "bf16-mixed" and VARIANTS["fp32"].precision == "32-true"
    assert "module.compile=True" in fast.overrides() and "module.channels_last=True" in fast.overrides()
    assert "model.activation_checkpointing=True" in VARIANTS["act_ckpt"].overrides()


def test_mfu_is_na_without_a_measured_peak():
    assert mfu(10**12, 1.0, "na") == "na"
    assert mfu(10**12, 1.0, 2.0) == pytest.approx(0.5)
    assert measure_bf16_peak_tflops(torch.device("cpu")) == "na"


def test_variants_and_no_scaling_options_narrow_the_run(bench, tmp_path, capsys):
    saved = bench.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(tmp_path),
                        "--variants", "fp32", "--headline", "act_ckpt", "--no-scaling"])
    assert set(saved["variants"]) == {"fp32"} and saved["scaling"] == []
    assert saved["step"]["variant"] == "act_ckpt" and saved["step"]["act_ckpt"]
    assert LAST_LINE.match(capsys.readouterr().out.strip().splitlines()[-1])
    with pytest.raises(SystemExit, match="unknown turbo"):
        bench.main(["--quick", "--device", "cpu", "--variants", "fp32,turbo"])


def test_a_failing_measurement_keeps_what_was_measured_before_it(bench, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("tile too small")

    monkeypatch.setattr(bench, "purify_photo", broken)
    with pytest.raises(MemoryError, match="tile too small"):
        bench.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(tmp_path),
                    "--variants", "fp32", "--no-scaling"])
    partial = json.loads((tmp_path / "bench.partial.json").read_text())
    assert partial["purify_224"]["img_per_s"] > 0 and "photo" not in partial and partial["step"]["whole"]["step_s"] > 0
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("quick, full", [(True, False), (False, False), (False, True)])
def test_photo_tiles_leave_room_for_the_purifiers_halo(quick, full, cuda):
    from nrp_bench.profiles import profile_for

    from nrp_lightning.models.purifier import RRDBPurifier
    from nrp_lightning.tiling import min_tile_side, receptive_margin

    profile = profile_for(torch.device("cuda" if cuda else "cpu"), quick, full)
    nf, nb, gc = profile.photo_model
    halo = receptive_margin(RRDBPurifier(nf=nf, nb=nb, gc=gc))
    assert profile.tile >= min_tile_side(halo), (profile.name, profile.tile, halo)


def test_cpu_paths_plan_times_bf16_only_where_native_and_on_the_cheap_case():
    from nrp_bench.cpu_paths import CASES, FOLD_CASES, SETTINGS, plan

    emulated = plan(native_bf16=False)
    assert [s for c, s in emulated if SETTINGS[s][1]] == ["cl_bf16_malloc"]  # only purify_224 gets bf16
    folded = [s for s, (_, _, _, fold) in SETTINGS.items() if fold]
    assert {c for c, s in plan(native_bf16=True) if s in folded} == set(FOLD_CASES) == {"mifgsm_step"}
    assert ("mifgsm_step", "cl_fold_fp32_malloc") in emulated
    assert len(plan(native_bf16=True)) == len(CASES) * (len(SETTINGS) - len(folded)) + len(FOLD_CASES) * len(folded)


def test_cpu_paths_measure_reports_time_flops_faults_and_kernel_share():
    from nrp_bench.cpu_paths import markdown, measure

    r = measure("purify_224", "cl_fp32")
    assert r["median_s"] > 0 and r["flops"] > 1e9 and r["minor_faults"] >= 0 and 0 <= r["kernel_share"] <= 1
    row = {"case": "purify_224", "setting": "cl_fp32", **r, "gflops": 1.0, "share_fp32_peak": 0.1,
           "share_bf16_peak": None, "speedup": 1.5}
    table = markdown({"native_bf16": False, "matmul_peaks": {"fp32_gflops": 10.0, "bf16_gflops": 1.0}, "rows": [row]})
    assert "| purify_224 | cl_fp32 |" in table and "1.50x" in table
