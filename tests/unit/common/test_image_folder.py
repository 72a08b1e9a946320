import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfed.common.data.image_folder import load_hospital, load_image_folder
from medfed.common.data.partition import partition_to_folders
from medfed.common.data.sources import SourceDataset
from medfed.common.errors import DataError
from tests.helpers import synthetic_dataset, write_image_folder


@pytest.fixture
def dataset() -> SourceDataset:
    return synthetic_dataset(num_classes=3, size=8, per_class=(6, 2, 3))


def test_an_exported_folder_decodes_to_the_same_pixels_labels_and_class_names(
    tmp_path: Path, dataset: SourceDataset
) -> None:
    root = write_image_folder(dataset, tmp_path / "hospital_a")

    loaded = load_image_folder(root)

    assert loaded.info.class_names == ("c0", "c1", "c2") and loaded.info.channels == 1
    for split in ("train", "val", "test"):
        images, labels = dataset.splits[split]
        got_images, got_labels = loaded.splits[split]
        order = np.lexsort((np.arange(len(labels)), labels))  # the folder lists class by class
        assert np.array_equal(got_labels, labels[order])
        assert {img.tobytes() for img in got_images} == {img.tobytes() for img in images}


def test_grey_jpegs_saved_as_rgb_stay_one_channel_and_colour_images_keep_three(
    tmp_path: Path, dataset: SourceDataset
) -> None:
    grey = write_image_folder(dataset, tmp_path / "grey", splits=("train",))
    for path in grey.rglob("*.png"):
        Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), quality=95)
        path.unlink()
    colour = write_image_folder(dataset, tmp_path / "colour", splits=("train",))
    first = next(colour.rglob("*.png"))
    Image.new("RGB", (8, 8), (200, 10, 10)).save(first)

    assert load_image_folder(grey).info.channels == 1
    assert load_image_folder(colour).info.channels == 3


def test_a_folder_of_class_folders_is_a_training_set_with_validation_held_out(
    tmp_path: Path, dataset: SourceDataset
) -> None:
    write_image_folder(dataset, tmp_path / "export", splits=("train",))
    shutil.move(tmp_path / "export" / "train", tmp_path / "hospital_b")
    for i in range(20):  # enough of class c0 for a tenth to be held out
        Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "hospital_b" / "c0" / f"extra{i}.png")

    data = load_hospital(tmp_path / "hospital_b")

    assert data.name == "hospital_b"
    assert len(data.split("train")) + len(data.split("val")) == 18 + 20
    assert len(data.split("val")) == 2  # 10% of c0's 26; c1 and c2 have too few to give any


def test_an_empty_class_folder_or_classes_keeps_the_federations_class_list(
    tmp_path: Path, dataset: SourceDataset
) -> None:
    root = write_image_folder(dataset, tmp_path / "h", splits=("train",))
    shutil.rmtree(root / "train" / "c1")

    with_classes = load_image_folder(root, classes=["c0", "c1", "c2"])
    (root / "train" / "c1").mkdir()
    with_empty_folder = load_image_folder(root)

    assert with_classes.info.class_names == with_empty_folder.info.class_names == ("c0", "c1", "c2")
    assert 1 not in set(with_classes.splits["train"][1].tolist())


def test_mixed_sizes_are_refused_unless_resized(tmp_path: Path, dataset: SourceDataset) -> None:
    root = write_image_folder(dataset, tmp_path / "h", splits=("train",))
    Image.new("L", (12, 10)).save(root / "train" / "c2" / "odd.png")

    with pytest.raises(DataError, match=r"differ in size: 18 are 8x8, but e.g. .*odd.png is 10x12; .*--image-size"):
        load_image_folder(root)
    resized = load_image_folder(root, image_size=16)

    assert resized.info.image_size == (16, 16) and resized.splits["train"][0].shape == (19, 16, 16)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: shutil.rmtree(root), r"does not exist or is not a folder"),
        (lambda root: [p.unlink() for p in root.rglob("*.png")], r"no images in .*one subfolder per class"),
        (lambda root: (root / "train" / "c0" / "broken.png").write_bytes(b"not a png"), r"broken.png cannot be read"),
        (lambda root: (root / "train" / "flu").mkdir(), r"class folder\(s\) \['flu'\] are not in --classes"),
    ],
)
def test_bad_folders_get_a_message_naming_the_problem(
    tmp_path: Path, dataset: SourceDataset, damage: Callable[[Path], object], message: str
) -> None:
    root = write_image_folder(dataset, tmp_path / "h", splits=("train",))
    damage(root)

    with pytest.raises(DataError, match=message):
        load_image_folder(root, classes=["c0", "c1", "c2"])


def test_loose_images_without_class_folders_are_refused(tmp_path: Path) -> None:
    (tmp_path / "h" / "train").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "h" / "train" / "x.png")

    with pytest.raises(DataError, match=r"holds images but no class subfolders"):
        load_image_folder(tmp_path / "h")


def test_fed_partition_splits_an_image_folder_into_hospital_folders(tmp_path: Path, dataset: SourceDataset) -> None:
    root = write_image_folder(dataset, tmp_path / "export")

    manifests = partition_to_folders(load_image_folder(root), tmp_path / "parts", clients=2, scheme="iid")

    assert sorted(manifests) == ["hospital_a", "hospital_b", "test"]
    assert load_hospital(tmp_path / "parts" / "hospital_a").info.class_names == ("c0", "c1", "c2")
    assert len(load_hospital(tmp_path / "parts" / "test", require=("test",)).split("test")) == 9


def test_a_class_map_renames_exported_folders_onto_the_federations_classes(
    tmp_path: Path, dataset: SourceDataset
) -> None:
    root = write_image_folder(dataset, tmp_path / "hospital_a", splits=("train",))
    for old, new in (("c0", "NORMAL"), ("c1", "PNEUMONIA_BACTERIAL"), ("c2", "PNEUMONIA_VIRAL")):
        (root / "train" / old).rename(root / "train" / new)
    mapping = {"NORMAL": "normal", "PNEUMONIA_BACTERIAL": "pneumonia", "PNEUMONIA_VIRAL": "pneumonia"}

    data = load_hospital(root, class_map=mapping)

    assert data.info.class_names == ("normal", "pneumonia")
    train, val = data.split("train"), data.split("val")
    assert np.bincount(np.concatenate([train.labels, val.labels])).tolist() == [6, 12]
    with pytest.raises(DataError, match=r"--class-map names folder\(s\) Normal, which .* does not have"):
        load_hospital(root, class_map={"Normal": "normal"})


def test_a_class_map_renames_a_partition_folders_classes_but_cannot_merge_them(tmp_path: Path) -> None:
    partition_to_folders(synthetic_dataset(num_classes=3, size=8), tmp_path / "parts", clients=1, scheme="iid")

    renamed = load_hospital(tmp_path / "parts" / "hospital_a", class_map={"c0": "normal"})

    assert renamed.info.class_names == ("normal", "c1", "c2")
    with pytest.raises(DataError, match="can only be renamed, not merged"):
        load_hospital(tmp_path / "parts" / "hospital_a", class_map={"c0": "c1"})
