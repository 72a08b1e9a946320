from pathlib import Path

import numpy as np
import pytest

from medfed.common.data.folders import load_folder
from medfed.common.data.partition import hospital_names, partition, partition_to_folders
from medfed.common.errors import ConfigError, PartitionError
from tests.helpers import synthetic_dataset

LABELS = np.repeat(np.arange(4), 50)


def test_every_example_goes_to_exactly_one_hospital() -> None:
    for scheme in ("iid", "dirichlet", "exclude-classes"):
        parts = partition({"train": LABELS}, num_clients=3, num_classes=4, scheme=scheme, alpha=0.5, seed=3)["train"]

        combined = np.concatenate(parts)
        assert sorted(combined.tolist()) == list(range(len(LABELS))), scheme


def test_iid_gives_every_hospital_every_class_in_equal_share() -> None:
    parts = partition({"train": LABELS}, num_clients=2, num_classes=4, scheme="iid", seed=0)["train"]

    for part in parts:
        assert np.bincount(LABELS[part], minlength=4).tolist() == [25, 25, 25, 25]


def test_exclude_classes_leaves_hospital_i_without_class_i() -> None:
    parts = partition({"train": LABELS, "val": LABELS}, num_clients=3, num_classes=4, scheme="exclude-classes")

    for split in ("train", "val"):
        for i, part in enumerate(parts[split]):
            counts = np.bincount(LABELS[part], minlength=4)
            assert counts[i] == 0
            assert all(counts[c] > 0 for c in range(4) if c != i)


def test_small_dirichlet_alpha_skews_hospitals_and_is_reproducible() -> None:
    first = partition({"train": LABELS}, num_clients=3, num_classes=4, scheme="dirichlet", alpha=0.1, seed=7)
    again = partition({"train": LABELS}, num_clients=3, num_classes=4, scheme="dirichlet", alpha=0.1, seed=7)

    assert all(np.array_equal(a, b) for a, b in zip(first["train"], again["train"], strict=True))
    shares = [np.bincount(LABELS[p], minlength=4) / max(len(p), 1) for p in first["train"]]
    assert max(float(s.max()) for s in shares) > 0.5  # some hospital is dominated by one class


def test_impossible_partitions_say_why() -> None:
    with pytest.raises(PartitionError, match="at least 2 hospitals"):
        partition({"train": LABELS}, num_clients=1, num_classes=4, scheme="exclude-classes")
    with pytest.raises(PartitionError, match="unknown scheme"):
        partition({"train": LABELS}, num_clients=2, num_classes=4, scheme="random")
    with pytest.raises(PartitionError, match="without training data"):
        partition({"train": np.zeros(2, dtype=np.int64)}, num_clients=3, num_classes=1, scheme="iid")


def test_hospital_names_continue_past_z() -> None:
    names = hospital_names(28)

    assert names[:2] == ["hospital_a", "hospital_b"] and names[25:] == [
        "hospital_z",
        "hospital_aa",
        "hospital_ab",
    ]


def test_folders_are_written_and_load_back_with_their_label_counts(tmp_path: Path) -> None:
    dataset = synthetic_dataset()

    manifests = partition_to_folders(dataset, tmp_path, clients=3, scheme="exclude-classes", seed=1)

    assert sorted(manifests) == ["hospital_a", "hospital_b", "hospital_c", "test"]
    a = load_folder(tmp_path / "hospital_a")
    assert a.name == "hospital_a" and a.info == dataset.info
    assert manifests["hospital_a"].counts["train"][0] == 0
    assert np.bincount(a.split("train").labels, minlength=4).tolist() == manifests["hospital_a"].counts["train"]
    test = load_folder(tmp_path / "test", require=("test",))
    assert len(test.split("test")) == len(dataset.splits["test"][1])


def test_existing_folders_are_not_overwritten_without_force(tmp_path: Path) -> None:
    dataset = synthetic_dataset()
    partition_to_folders(dataset, tmp_path, clients=2, scheme="iid")

    with pytest.raises(ConfigError, match="--force"):
        partition_to_folders(dataset, tmp_path, clients=2, scheme="iid")
    partition_to_folders(dataset, tmp_path, clients=2, scheme="iid", force=True)
