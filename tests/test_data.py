import pytest
import torch
from PIL import Image

from nrp_lightning.data import EmbeddedImages, ImageFolder, NRPDataModule, RandomCrops, resize_for_crop


def test_embedded_photos_load_offline():
    src = EmbeddedImages()
    assert len(src) == 9 and "grace_hopper" in src.names and "motorcycle_1" in src.names
    assert all(src.load(i).shape[0] == 3 and min(src.load(i).shape[1:]) >= 300 for i in range(len(src)))


def test_small_images_are_upscaled_and_resize_is_applied():
    assert resize_for_crop(torch.rand(3, 10, 40), 32, None).shape == (3, 32, 128)
    assert resize_for_crop(torch.rand(3, 100, 50), 32, 48).shape == (3, 48, 48)


def test_unreadable_images_are_skipped_and_counted(tmp_path, caplog):
    Image.new("RGB", (40, 50), "blue").save(tmp_path / "good.png")
    Image.new("L", (8, 8)).save(tmp_path / "tiny_gray.png")
    (tmp_path / "bad.jpg").write_text("not an image")
    crops = RandomCrops(ImageFolder(str(tmp_path)), crop_size=32, length=6)
    batch = torch.stack([crops[i] for i in range(6)])
    assert batch.shape == (6, 3, 32, 32)
    assert crops.skipped == {"bad.jpg"}
    assert "skipping unreadable image" in caplog.text


def test_folder_subset_is_seeded(tmp_path):
    for i in range(10):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    a, b = ImageFolder(str(tmp_path), subset=4, seed=1), ImageFolder(str(tmp_path), subset=4, seed=1)
    assert len(a) == 4 and a.paths == b.paths
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(str(tmp_path / "empty"))


def test_datamodule_holds_out_validation_images_with_fixed_crops():
    dm = NRPDataModule(EmbeddedImages(["astronaut", "chelsea", "coffee"]), crop_size=32, batch_size=2,
                       samples_per_epoch=4, val_images=1, val_crops=3)
    dm.setup("fit")
    assert len(dm.train_set.source) == 2 and len(dm.val_set.source) == 1
    assert next(iter(dm.train_dataloader())).shape == (2, 3, 32, 32)
    v1, v2 = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert torch.equal(v1, v2)
    with pytest.raises(ValueError, match="crop_size"):
        NRPDataModule(EmbeddedImages(["chelsea", "coffee"]), crop_size=16)
