"""Real fed-server and fed-client processes federating over loopback on an ephemeral port."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medfed.common.data.folders import load_folder
from medfed.common.data.partition import partition_to_folders
from medfed.common.ml.models import build_model
from medfed.common.ml.torch_state import to_torch
from medfed.common.ml.training import evaluate
from medfed.common.tensors import is_float
from medfed.server.run_dir import load_model
from medfed.tools.local_run import ProcessGroup
from tests.helpers import InProcessModels, run_cli, start_server, synthetic_dataset, write_image_folder

HOSPITALS = ["hospital_a", "hospital_b", "hospital_c"]


def start_hospitals(
    procs: ProcessGroup, data: Path, port: int, pki_dir: Path | None = None, names: list[str] = HOSPITALS
) -> None:
    """fed-client processes (three by default); with ``pki_dir`` each presents its own certificate, else
    --insecure."""
    for name in names:
        security = (
            ["--tls-cert", str(pki_dir / f"{name}.crt"), "--tls-key", str(pki_dir / f"{name}.key"),
             "--tls-ca", str(pki_dir / "ca.crt")]
            if pki_dir else ["--insecure"]
        )  # fmt: skip
        procs.start(
            name, "medfed.client", "--data", str(data / name), "--server", f"127.0.0.1:{port}", *security,
            "--threads", "1", "--no-progress", "--max-wait", "30",
        )  # fmt: skip


def make_pki(pki_dir: Path) -> list[str]:
    """Certificates for the coordinator and the three hospitals, made with the fed-certs command."""
    commands = [["init"], ["server", "--host", "127.0.0.1,localhost"]] + [["client", "--name", h] for h in HOSPITALS]
    for command in commands:
        result = run_cli("medfed.tools.certs", command[0], "--dir", str(pki_dir), *command[1:])
        assert result.returncode == 0, result.stderr
    return [
        "--tls-cert", str(pki_dir / "server.crt"), "--tls-key", str(pki_dir / "server.key"),
        "--tls-ca", str(pki_dir / "ca.crt"), "--tls-crl", str(pki_dir / "crl.pem"), "--allow", ",".join(HOSPITALS),
    ]  # fmt: skip


def read_history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_three_hospitals_federate_over_mutual_tls_and_beat_chance(tmp_path: Path, procs: ProcessGroup) -> None:
    dataset = synthetic_dataset(num_classes=4)
    partition_to_folders(dataset, tmp_path / "data", clients=3, scheme="exclude-classes", seed=0)
    config = tmp_path / "server.toml"
    config.write_text('rounds = 9\nmodel = "cnn"\nlocal-epochs = 2\nbatch-size = 16\n')
    out = tmp_path / "run"
    tls_flags = make_pki(tmp_path / "pki")

    port = start_server(
        procs,
        tmp_path,
        *tls_flags,
        "--config",
        str(config),
        "--rounds",
        "3",
        "--min-clients",
        "3",
        "--test-data",
        str(tmp_path / "data" / "test"),
        "--out",
        str(out),
        "--round-timeout",
        "120",
    )
    start_hospitals(procs, tmp_path / "data", port, pki_dir=tmp_path / "pki")
    codes = procs.wait_all(timeout=240)

    assert codes == {"server": 0, **{h: 0 for h in HOSPITALS}}, procs.log("server")
    history = read_history(out)
    assert [r["round"] for r in history] == [1, 2, 3]  # the flag overrode the file's rounds = 9
    assert all(sorted(r["clients"]) == HOSPITALS and r["num_clients"] == 3 for r in history)
    assert all(
        r["num_examples"] == sum(len(load_folder(tmp_path / "data" / h).split("train")) for h in HOSPITALS)
        for r in history
    )
    assert history[-1]["accuracy"] > 0.25 + 0.35  # four classes: chance is 0.25
    assert all("val_accuracy" in m for m in history[-1]["client_metrics"].values())
    state, meta = load_model(out)
    assert meta["model"] == "cnn" and meta["class_names"] == ["c0", "c1", "c2", "c3"] and meta["round"] == 3
    model = build_model("cnn", 1, 4)
    model.load_state_dict(to_torch(state))
    test = load_folder(tmp_path / "data" / "test", require=("test",)).split("test")
    assert evaluate(model, test, 4, torch.device("cpu")).accuracy == pytest.approx(history[-1]["accuracy"])
    for name in HOSPITALS:
        assert "federation finished" in procs.log(name)
    # the report: each hospital lacks one class (exclude-classes), and said which classes it has
    subset_accuracy = history[-1]["hospital_class_accuracy"]
    assert set(subset_accuracy) == set(HOSPITALS) and all(0 <= a <= 1 for a in subset_accuracy.values())
    assert 0.5 <= history[-1]["auc"] <= 1.0
    assert all("global_val_accuracy" in m for m in history[-1]["client_metrics"].values())
    report = (out / "report.md").read_text()
    assert "| hospital_a | c1, c2, c3 |" in report and "| hospital_c | c0, c1, c3 |" in report
    for png in ("accuracy_loss.png", "per_class_accuracy.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_rows = (out / "confusion_matrix.csv").read_text().splitlines()
    assert sum(int(v) for row in csv_rows[1:] for v in row.split(",")[1:]) == history[-1]["test_examples"]


def test_hospitals_train_straight_from_image_folders_mapped_or_not_and_a_foreign_class_is_refused(
    tmp_path: Path, procs: ProcessGroup
) -> None:
    dataset = synthetic_dataset(num_classes=3, size=8, per_class=(20, 4, 10))
    for name in ("hospital_a", "hospital_b"):
        write_image_folder(dataset, tmp_path / name, splits=("train", "val"))
    for split in ("train", "val"):  # hospital_b exported its classes under other names: C0, C1, C2
        for c in ("c0", "c1", "c2"):
            (tmp_path / "hospital_b" / split / c).rename(tmp_path / "hospital_b" / split / c.upper())
    write_image_folder(dataset, tmp_path / "test_set", splits=("test",))
    write_image_folder(dataset, tmp_path / "hospital_c", splits=("train",))
    (tmp_path / "hospital_c" / "train" / "flu").mkdir()
    out = tmp_path / "run"

    port = start_server(procs, tmp_path, "--rounds", "2", "--min-clients", "2", "--test-data",
                        str(tmp_path / "test_set"), "--out", str(out))  # fmt: skip
    for name, flags in (("hospital_a", []), ("hospital_b", ["--class-map", "C0=c0,C1=c1,C2=c2"]), ("hospital_c", [])):
        procs.start(name, "medfed.client", "--data", str(tmp_path / name), "--server", f"127.0.0.1:{port}",
                    "--insecure", "--threads", "1", "--no-progress", *flags)  # fmt: skip
    codes = procs.wait_all(timeout=180)

    assert codes == {"server": 0, "hospital_a": 0, "hospital_b": 0, "hospital_c": 1}, procs.log("server")
    history = read_history(out)
    assert [sorted(r["clients"]) for r in history] == [["hospital_a", "hospital_b"]] * 2
    assert history[-1]["test_examples"] == 30 and set(history[-1]["per_class_accuracy"]) == {"c0", "c1", "c2"}
    assert "the federation has no class ['flu']" in procs.log("hospital_c")
    assert "map the hospital's folders onto them with fed-client --class-map FOLDER=CLASS" in procs.log("hospital_c")


def test_resnet18_streams_through_real_processes_bit_exactly(tmp_path: Path, procs: ProcessGroup) -> None:
    dataset = synthetic_dataset(num_classes=3, size=16, per_class=(4, 2, 2))
    partition_to_folders(dataset, tmp_path / "data", clients=2, scheme="iid")
    out = tmp_path / "run"

    port = start_server(procs, tmp_path, "--model", "resnet18", "--local-epochs", "0", "--rounds", "2",
                        "--min-clients", "2", "--out", str(out), "--seed", "5")  # fmt: skip
    start_hospitals(procs, tmp_path / "data", port, names=HOSPITALS[:2])
    codes = procs.wait_all(timeout=240)

    assert set(codes.values()) == {0}, procs.log("server")
    assert all(sorted(r["clients"]) == HOSPITALS[:2] for r in read_history(out))
    # Hospitals that do not train send the global model back; FedAvg of identical models is that model,
    # so after two round trips of 44.7 MB each way the result must equal the initial weights bit for bit.
    final, _ = load_model(out)
    expected = InProcessModels("resnet18").initial_model(dataset.info, seed=5).tensors()
    assert sum(t.nbytes for t in final.values()) > 44_000_000
    assert final.keys() == expected.keys()
    assert all(np.array_equal(final[k], expected[k]) and final[k].dtype == expected[k].dtype for k in expected)


def test_hospitals_send_int8_deltas_when_the_coordinator_asks(tmp_path: Path, procs: ProcessGroup) -> None:
    dataset = synthetic_dataset(num_classes=3, size=16, per_class=(12, 12, 12))
    partition_to_folders(dataset, tmp_path / "data", clients=2, scheme="iid")
    out = tmp_path / "run"

    port = start_server(
        procs, tmp_path, "--update-encoding", "int8", "--rounds", "2", "--min-clients", "2", "--out", str(out),
        "--batch-size", "8", "--test-data", str(tmp_path / "data" / "test"),
    )  # fmt: skip
    start_hospitals(procs, tmp_path / "data", port, names=HOSPITALS[:2])
    codes = procs.wait_all(timeout=240)

    assert set(codes.values()) == {0}, procs.log("server")
    history = read_history(out)
    assert [sorted(r["clients"]) for r in history] == [HOSPITALS[:2], HOSPITALS[:2]]
    assert all(r["update_encoding"] == "int8" for r in history)
    # float32 tensors travel as one byte each (plus alignment): well under a third of the model's bytes
    assert all(0 < r["bytes_up"] < r["bytes_down"] / 3 for r in history)
    final, _ = load_model(out)
    assert all(np.isfinite(t).all() for t in final.values() if is_float(t.dtype))


def test_fed_demo_runs_offline_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"

    demo = subprocess.Popen(
        [sys.executable, "-m", "medfed.tools.demo", "--rounds", "2", "--clients", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:  # never leave the demo's server and hospitals behind
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()

    assert demo.returncode == 0, stdout + stderr
    rounds = [line for line in stdout.splitlines() if line.startswith("round ")]
    assert len(rounds) == 2 and "test accuracy" in rounds[0]
    assert (out / "run" / "model.safetensors").exists() and (out / "run" / "model.json").exists()


def test_fed_study_compares_hospitals_alone_the_federation_and_pooled_data(tmp_path: Path) -> None:
    partition_to_folders(synthetic_dataset(num_classes=3, size=8), tmp_path / "data", clients=2,
                         scheme="exclude-classes", seed=0)  # fmt: skip
    (tmp_path / "here").mkdir()

    result = run_cli(
        "medfed.tools.study", "--hospitals", str(tmp_path / "data" / "hospital_a"),
        str(tmp_path / "data" / "hospital_b"), "--test", str(tmp_path / "data" / "test"), "--rounds", "2",
        "--batch-size", "16", timeout=300, cwd=tmp_path / "here",
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    (out,) = (tmp_path / "here").iterdir()  # no --out: a new folder where it was run
    assert out.name.startswith("fed-study-own-") and f"the study writes to {out.name}" in result.stdout
    assert "\r" not in result.stderr  # no progress bars when standard error is not a terminal
    study = json.loads((out / "study.json").read_text())
    names = [m["name"] for m in study["models"]]
    assert names == ["local hospital_a", "local hospital_b", "federated", "centralized"]
    assert study["settings"]["epochs"] == 2 and study["train_classes"] == {"hospital_a": [1, 2], "hospital_b": [0, 2]}
    local_a = study["models"][0]
    assert local_a["per_class_accuracy"]["c0"] == 0.0  # a class it never saw is never predicted
    assert study["models"][3]["train_images"] == study["models"][0]["train_images"] + study["models"][1]["train_images"]
    federated = read_history(out / "federated")[-1]
    assert study["models"][2]["accuracy"] == federated["accuracy"]
    assert "| federated | " in (out / "report.md").read_text() and (out / "federated" / "report.md").exists()
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "study.csv").read_text().splitlines()) == 5


@pytest.mark.parametrize(
    "script", ["fed-server", "fed-client", "fed-certs", "fed-partition", "fed-demo", "fed-health", "fed-study"]
)
def test_console_scripts_are_installed(script: str) -> None:
    path = shutil.which(script, path=str(Path(sys.executable).parent))
    assert path is not None

    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0 and "examples:" in result.stdout
