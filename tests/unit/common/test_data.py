import json
from pathlib import Path

import numpy as np
import pytest

from medfed.common.data.folders import DatasetInfo, load_folder, save_folder
from medfed.common.data.sources import load_digits, load_npz, load_source
from medfed.common.errors import DataError
from tests.helpers import synthetic_dataset


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    dataset = synthetic_dataset()
    save_folder(tmp_path / "h", "h", dataset.info, {"train": dataset.splits["train"], "val": dataset.splits["val"]})
    return tmp_path / "h"


def _rewrite_npz(folder: Path, **arrays: np.ndarray) -> None:
    with np.load(folder / "data.npz") as npz:
        content = {k: npz[k] for k in npz.files}
    content.update(arrays)
    np.savez(folder / "data.npz", **content)


def test_a_valid_folder_loads_as_uint8_nchw(folder: Path) -> None:
    data = load_folder(folder)

    train = data.split("train")
    assert train.images.dtype == np.uint8 and tuple(train.images.shape[1:]) == (1, 12, 12)
    assert len(data.split("test")) == 0


def test_missing_folder_and_manifest_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"manifest\.json is missing"):
        load_folder(tmp_path / "empty")


def test_malformed_manifest_is_refused(folder: Path) -> None:
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_folder(folder)
    (folder / "manifest.json").write_text(json.dumps({"name": "h"}))
    with pytest.raises(DataError, match="data"):
        load_folder(folder)


def test_labels_out_of_range_are_refused(folder: Path) -> None:
    labels = np.full((10, 1), 9, dtype=np.int64)
    _rewrite_npz(folder, train_labels=labels, train_images=np.zeros((10, 12, 12), np.uint8))

    with pytest.raises(DataError, match=r"value 9 outside 0\.\.3"):
        load_folder(folder)


def test_wrong_image_shape_and_dtype_are_refused(folder: Path) -> None:
    _rewrite_npz(folder, train_images=np.zeros((60 * 4, 10, 10), np.uint8))
    with pytest.raises(DataError, match="10x10"):
        load_folder(folder)
    _rewrite_npz(folder, train_images=np.zeros((60 * 4, 12, 12), np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_folder(folder)


def test_a_corrupt_npz_is_refused(folder: Path) -> None:
    (folder / "data.npz").write_bytes(b"PK\x03\x04 definitely not a zip")

    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_folder(folder)


def test_pickled_arrays_are_never_loaded(folder: Path) -> None:
    _rewrite_npz(folder, train_labels=np.array([{"evil": 1}] * 240, dtype=object))

    with pytest.raises(DataError, match="allow_pickle"):
        load_folder(folder)


def test_digits_ship_offline_and_split_stratified() -> None:
    digits = load_digits(seed=0)

    assert digits.info.num_classes == 10 and digits.info.image_size == (8, 8)
    assert sum(len(labels) for _, labels in digits.splits.values()) == 1797
    assert digits.splits["train"][0].dtype == np.uint8 and digits.splits["train"][0].max() == 255


def test_medmnist_npz_gets_medmnist_class_names(tmp_path: Path) -> None:
    images = np.zeros((6, 28, 28), np.uint8)
    np.savez(
        tmp_path / "pneumoniamnist.npz",
        train_images=images,
        train_labels=np.array([[0], [1]] * 3),
        test_images=images,
        test_labels=np.array([[1]] * 6),
    )

    dataset = load_npz(tmp_path / "pneumoniamnist.npz")

    assert dataset.info.class_names == ("normal", "pneumonia") and dataset.info.task == "binary-class"


@pytest.mark.parametrize(("size", "file_name"), [(28, "octmnist.npz"), (64, "octmnist_64.npz"),
                                                 (128, "octmnist_128.npz"), (224, "octmnist_224.npz")])  # fmt: skip
def test_every_medmnist_size_loads_from_its_own_file(tmp_path: Path, size: int, file_name: str) -> None:
    images = np.zeros((8, size, size), np.uint8)
    labels = np.arange(8).reshape(-1, 1) % 4
    np.savez(tmp_path / file_name, train_images=images, train_labels=labels, test_images=images, test_labels=labels)

    dataset = load_source("octmnist", data_root=tmp_path, size=size)

    assert dataset.info.image_size == (size, size) and dataset.info.class_names[0].startswith("choroidal")


def test_medmnist_name_with_data_root_never_downloads(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found in --data-root"):
        load_source("pneumoniamnist", data_root=tmp_path)
    with pytest.raises(DataError, match="unknown source"):
        load_source("no-such-dataset")
    with pytest.raises(DataError, match="3D"):
        load_source("organmnist3d", data_root=tmp_path)


def test_a_failed_download_is_reported_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medmnist

    from medfed.common.data import sources

    class Offline:
        def __init__(self, **kwargs: object) -> None:
            raise RuntimeError("Automatic download failed!\n    1. Check your network connection")

    monkeypatch.setattr(medmnist, "PneumoniaMNIST", Offline)
    monkeypatch.setattr(sources, "DEFAULT_MEDMNIST_ROOT", tmp_path)

    with pytest.raises(DataError) as err:
        load_source("pneumoniamnist")

    message = str(err.value)
    assert "\n" not in message
    assert "zenodo.org" in message and "--data-root" in message and "28209eda62fecd6e6a2d98b1501bb15f" in message


def test_a_join_refused_for_other_class_names_says_how_to_map_them() -> None:
    federation = DatasetInfo(
        dataset="pneumoniamnist", channels=1, class_names=("normal", "pneumonia"), image_size=(28, 28)
    )
    exported = federation.model_copy(update={"dataset": "hospital_a", "class_names": ("NORMAL", "PNEUMONIA")})
    unrelated = federation.model_copy(update={"class_names": ("cat", "dog")})

    assert federation.mismatch(exported) == (
        "class_names ['NORMAL', 'PNEUMONIA'] differ from the federation's ['normal', 'pneumonia']: the federation "
        "has no class ['NORMAL', 'PNEUMONIA']; if these are the federation's classes under other names, map the "
        "hospital's folders onto them with fed-client --class-map NORMAL=normal,PNEUMONIA=pneumonia"
    )
    assert "--class-map FOLDER=CLASS,..." in (federation.mismatch(unrelated) or "")
