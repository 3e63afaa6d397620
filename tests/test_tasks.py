"""Cross-task pieces on a tiny COCO-format set and mask folder made here (real JSON, real PNGs)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from nrp_lightning.tasks.coco import CocoInstances
from nrp_lightning.tasks.detection import build_detector, detect, detection_map
from nrp_lightning.tasks.segmentation import MaskFolder, build_segmenter, segmentation_metrics


@pytest.fixture
def tiny_coco(tmp_path):
    images = tmp_path / "val2017"
    images.mkdir()
    rng = np.random.default_rng(0)
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}
    for i in range(3):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(images / f"{i:012d}.jpg")
        data["images"].append({"id": i + 1, "file_name": f"{i:012d}.jpg", "height": 48, "width": 64})
        data["annotations"].append({"id": 10 * i + 1, "image_id": i + 1, "category_id": 1 if i % 2 else 18,
                                    "bbox": [5.0, 6.0, 20.0, 30.0], "area": 600.0, "iscrowd": 0,
                                    "segmentation": [[5, 6, 25, 6, 25, 36, 5, 36]]})
    data["images"].append({"id": 99, "file_name": "missing.jpg", "height": 1, "width": 1})
    (tmp_path / "instances_val2017.json").write_text(json.dumps(data))
    return images, tmp_path / "instances_val2017.json"


def test_coco_instances_reads_boxes_labels_and_polygon_masks(tiny_coco):
    ds = CocoInstances(*map(str, tiny_coco), with_masks=True)
    assert len(ds) == 3  # the image missing on disk is left out
    image, target = ds[0]
    assert image.shape == (3, 48, 64)
    assert target["boxes"].tolist() == [[5.0, 6.0, 25.0, 36.0]] and target["labels"].tolist() == [18]
    assert target["masks"].shape == (1, 48, 64) and target["masks"][0, 20, 15] and not target["masks"][0, 40, 50]


def test_map_is_one_when_predictions_equal_the_ground_truth(tiny_coco):
    ds = CocoInstances(*map(str, tiny_coco), with_masks=True)
    targets = [ds[i][1] for i in range(len(ds))]
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    assert detection_map(perfect, targets) == {"map_50": 1.0, "map": 1.0}
    assert detection_map(perfect, targets, iou_type="segm")["map_50"] == 1.0
    shifted = [{**p, "boxes": p["boxes"] + 15.0} for p in perfect]
    assert detection_map(shifted, targets)["map_50"] < 0.5


def test_random_small_detector_runs_end_to_end(tiny_coco):
    torch.manual_seed(0)
    model = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", pretrained=False, num_classes=91)
    ds = CocoInstances(*map(str, tiny_coco))
    preds = detect(model, [ds[0][0], ds[1][0]])
    assert len(preds) == 2 and set(preds[0]) >= {"boxes", "scores", "labels"}
    metrics = detection_map(preds, [ds[0][1], ds[1][1]])
    assert 0.0 <= metrics["map_50"] <= 1.0
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("yolo", pretrained=False)


def test_segmentation_metrics_and_mask_folder(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    mask = np.zeros((32, 40), dtype=np.uint8)
    mask[8:20, 10:30] = 3
    mask[0, :] = 255  # VOC border pixels are ignored
    Image.fromarray(np.full((32, 40, 3), 128, dtype=np.uint8)).save(tmp_path / "img" / "a.jpg")
    Image.fromarray(mask, mode="L").save(tmp_path / "lbl" / "a.png")
    image, target = MaskFolder(str(tmp_path / "img"), str(tmp_path / "lbl"))[0]
    assert image.shape == (3, 32, 40) and target.dtype == torch.int64 and target.max() == 255
    perfect = segmentation_metrics(target.clamp(max=20)[None], target[None], num_classes=21)
    assert perfect == {"pixel_acc": 1.0, "miou": 1.0}
    wrong = segmentation_metrics(torch.zeros_like(target)[None], target[None], num_classes=21)
    assert wrong["miou"] < 1.0 and wrong["pixel_acc"] < 1.0
    seg = build_segmenter("lraspp_mobilenet_v3_large", pretrained=False, num_classes=21)
    assert seg(image[None]).shape == (1, 21, 32, 40)


def test_cross_task_grid_end_to_end(tiny_coco, tmp_path):
    from nrp_lightning.attacks.ssp import ssp
    from nrp_lightning.tasks.cross_task import CrossTaskGrid, run_cross_task

    torch.manual_seed(0)
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).requires_grad_(False)
    detector = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", pretrained=False, num_classes=91)
    grid = CrossTaskGrid(
        task="detection", dataset=CocoInstances(*map(str, tiny_coco)), models={"frcnn": detector},
        attacks={"SSP-8": lambda x: ssp(x, features, eps=8, step_size=2, steps=2)},
        defenses={"blur": lambda x: torch.nn.functional.avg_pool2d(x, 3, 1, 1)}, samples=1)
    rows = run_cross_task(grid, tmp_path / "out", progress=False)
    assert {(r["attack"], r["defense"]) for r in rows} == {(a, d) for a in ("clean", "SSP-8") for d in ("none", "blur")}
    assert all(r["n"] == 3 and 0 <= r["bbox_map_50"] <= 1 for r in rows)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Table 4 layout" in report and "Table 2 layout: frcnn" in report
    assert len(list((tmp_path / "out" / "samples").glob("0_frcnn_*.png"))) == 4


@pytest.mark.parametrize("preset", ["table4", "table2_detection", "table2_segmentation"])
def test_cross_task_presets_compose_and_name_real_code(preset, tmp_path):
    """Every ``_target_`` of each preset resolves to real code (instantiating needs weights from the internet)."""
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    from nrp_lightning.config import compose

    cfg = compose([f"tasks={preset}", "nrp_weights=NRP.pth"] if preset != "table4" else [f"tasks={preset}"],
                  config_name="cross_task", run_dir=str(tmp_path))
    node = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "models", "attacks", "defenses")}
    targets = []

    def walk(n):
        if isinstance(n, dict):
            if "_target_" in n:
                targets.append(n["_target_"])
            for v in n.values():
                walk(v)
    walk(node)
    assert targets and all(callable(get_object(t)) for t in targets)
    assert cfg.task == ("segmentation" if "segmentation" in preset else "detection")
