"""The data builders and the NeurIPS-2017 split, on small synthetic clones (no test reads the real
cloned datasets)."""
import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from scripts.build_datasets import main
from nrp_lightning.eval_data import neurips_dev, neurips_split


def _png(path, value, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _neurips_clone(root, ids, missing=()):
    """The layout of github.com/NilsRublein/DL: data/images/<ImageId>.png + data/dev_dataset.csv."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "dev_dataset.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ImageId", "URL", "OriginalLandingURL", "License", "Author", "TrueLabel"])
        writer.writeheader()
        for i, image_id in enumerate(ids):
            writer.writerow({"ImageId": image_id, "URL": "u", "OriginalLandingURL": f"https://flickr/{i}",
                             "License": "CC BY 2.0", "Author": "a", "TrueLabel": str(i + 1)})
            if image_id not in missing:
                _png(root / "data" / "images" / f"{image_id}.png", 10 * i)
    (root / "data").mkdir(exist_ok=True)
    (root / "dev_dataset.csv.tmp").rename(root / "data" / "dev_dataset.csv")


def test_the_split_rule_depends_on_the_image_id_alone_and_keeps_about_a_third_for_dev():
    ids = [hashlib.md5(str(i).encode()).hexdigest()[:16] for i in range(3000)]
    splits = [neurips_split(i) for i in ids]
    assert splits == [neurips_split(i) for i in ids] and set(splits) == {"dev", "test"}
    assert 0.30 < splits.count("dev") / len(ids) < 0.37
    assert neurips_split("0c7ac4a8c9dfa802") == "test"  # pinned: every copy of the set splits the same


def test_neurips_builder_copies_listed_images_with_labels_split_and_manifest(tmp_path, capsys):
    ids = [hashlib.md5(str(i).encode()).hexdigest()[:16] for i in range(9)]
    _neurips_clone(tmp_path / "clone", ids, missing={ids[4]})
    assert main(["neurips", str(tmp_path / "clone"), "--out", str(tmp_path / "out")]) == 0
    dev = sum(neurips_split(i) == "dev" for i in ids if i != ids[4])
    assert capsys.readouterr().out.strip() == (f"neurips: 8 of the 9 listed images ({dev} dev, {8 - dev} test) "
                                               f"in {tmp_path / 'out'}")
    rows = list(csv.DictReader(open(tmp_path / "out" / "images.csv")))
    assert [r["ImageId"] for r in rows] == [i for i in ids if i != ids[4]]
    assert all(r["split"] == neurips_split(r["ImageId"]) for r in rows)
    manifest = list(csv.DictReader(open(tmp_path / "out" / "MANIFEST.csv")))
    first = tmp_path / "out" / "images" / f"{ids[0]}.png"
    assert manifest[0]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert manifest[0]["licence"] == "CC BY 2.0" and manifest[0]["source"] == "https://flickr/0"
    for split in ("dev", "test"):
        data = neurips_dev(str(tmp_path / "out"), size=32, split=split, crop=0.875)
        expected = [r for r in rows if r["split"] == split]
        assert data.names == [r["ImageId"] for r in expected]
        assert data.labels.tolist() == [int(r["TrueLabel"]) - 1 for r in expected]  # stored 0-based
        assert data.images.shape == (len(expected), 3, 32, 32)


def test_imagenet_builder_takes_only_the_even_positions_and_never_opens_the_odd_ones(tmp_path, monkeypatch):
    import shutil

    import scripts.build_datasets as builder

    opened, real_copyfile = [], shutil.copyfile
    monkeypatch.setattr(builder.shutil, "copyfile", lambda src, dst, **kw: (opened.append(src.name),
                                                                             real_copyfile(src, dst, **kw))[1])
    clone = tmp_path / "imagenet-sample-images"
    clone.mkdir()
    for i in range(1000):
        path = clone / f"n{i:08d}_class{i}.JPEG"
        if i % 2 == 0:
            Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(path, format="JPEG")
        else:
            path.write_bytes(b"")  # not an image: it must not be opened, let alone copied
    main(["imagenet", str(clone), "--out", str(tmp_path / "out")])
    manifest = list(csv.DictReader(open(tmp_path / "out" / "MANIFEST.csv")))
    assert len(manifest) == 500 and [int(r["label"]) for r in manifest] == list(range(0, 1000, 2))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.JPEG")) == [r["file"] for r in manifest]
    assert opened == [r["file"] for r in manifest]  # the odd files were listed by name only


def test_coco_builder_keeps_the_first_n_by_name(tmp_path):
    for name in ("000000000009.jpg", "000000000025.jpg", "000000000030.jpg"):
        path = tmp_path / "clone" / "images" / "train2017" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(path, format="JPEG")
    main(["coco", str(tmp_path / "clone"), "--out", str(tmp_path / "out"), "--limit", "2"])
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jpg")) == ["000000000009.jpg", "000000000025.jpg"]


def test_a_folder_of_the_wrong_repository_is_a_one_line_error(tmp_path):
    (tmp_path / "clone").mkdir()
    with pytest.raises(SystemExit, match="none of data/dev_dataset.csv, dev_dataset.csv, images.csv found"):
        main(["neurips", str(tmp_path / "clone"), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="expected the 1000 .JPEG files"):
        main(["imagenet", str(tmp_path / "clone"), "--out", str(tmp_path / "out")])


def test_the_neurips_loader_says_how_to_build_the_folder_when_it_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="build it with scripts/build_datasets.py neurips"):
        neurips_dev(str(tmp_path / "nowhere"))
