"""fed-audit on run folders written by the driver (tests/unit/server/test_audit_log.py's signed runs):
verify names the file and place that does not hold, show draws the grid, receipt checks what a
hospital kept against the run."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

from medfed.common import pki
from medfed.common.provenance.receipts import issue_receipt
from medfed.server.report.plots import grid_figure
from medfed.tools.audit.cli import main
from tests.signed_runs import Federation, Run, make_federation, signed_run


@pytest.fixture(scope="module")
def federation() -> Federation:
    return make_federation()


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, federation: Federation) -> tuple[Run, Path]:
    run = signed_run(tmp_path_factory.mktemp("run"), federation)
    ca = run.out.parent / "ca.crt"
    pki.write_public(ca, federation.ca)  # type: ignore[arg-type]
    return run, ca


def copy_of(run: Run, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run.out, tmp_path / "copy"))


def swap_in_history(out: Path, old: str, new: str) -> None:
    path = out / "history.jsonl"
    path.write_text(path.read_text().replace(old, new, 1))


def flip(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


def test_verify_passes_a_whole_run_and_says_what_it_checked(
    ran: tuple[Run, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, ca = ran
    assert main(["verify", str(run.out), "--ca", str(ca)]) == 0
    out = capsys.readouterr().out
    assert "3 records, rounds 1-2, linked and signed by the coordinator; 6 hospital signature(s)" in out
    for checked in ("checkpoint-round-000002.safetensors: the chain's model after round 2",
                    "model.safetensors: the chain's last model", "model.json: names the chain's head",
                    "history.jsonl: every round credited"):  # fmt: skip
        assert checked in out
    assert out.strip().endswith(f"verified: {run.out}")


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda out: flip(out / "checkpoint-round-000002.safetensors"), "checkpoint-round-000002.safetensors is not"),
        (lambda out: flip(out / "model.safetensors"), "model.safetensors is not the chain's last model"),
        (lambda out: flip(out / "audit.jsonl", 30), "audit.jsonl line 3 (round 2)"),
        (lambda out: (out / "model.json").write_text(json.dumps({"audit": {"head": "0" * 64}})), "model.json names"),
        (
            lambda out: (out / "history.jsonl").write_text(
                (out / "history.jsonl").read_text().replace('"hospital_c"', '"hospital_d"', 1)
            ),
            "history.jsonl credits round 1",
        ),
    ],
)
def test_verify_fails_on_any_damaged_file_and_names_it(ran: tuple[Run, Path], tmp_path: Path, damage, named: str,  # type: ignore[no-untyped-def]
                                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    run, ca = ran
    out = copy_of(run, tmp_path)
    damage(out)
    assert main(["verify", str(out), "--ca", str(ca)]) == 1
    assert f"FAIL {named}" in capsys.readouterr().out


def test_verify_needs_the_ca_for_a_signed_chain_and_a_chain_at_all(
    ran: tuple[Run, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = ran
    assert main(["verify", str(run.out)]) == 2
    assert main(["verify", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "give the federation's CA with --ca" in errors[0] and "does not exist" in errors[1]


def test_show_prints_who_contributed_and_draws_a_grid_whose_legend_covers_nothing(
    ran: tuple[Run, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = ran
    assert main(["show", str(run.out), "--png", str(tmp_path / "grid.png")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["round", "hospital_a", "hospital_b", "hospital_c"]
    assert table[1].split()[:7] == ["1", "ok", "10", "ok", "10", "ok", "10"]
    assert (tmp_path / "grid.png").stat().st_size > 0
    fig = grid_figure("t", ["a", "b"], list(range(1, 61)), {("a", 1): "accepted", ("b", 2): "refused"})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    legend = fig.legends[0].get_window_extent(renderer)
    assert not legend.overlaps(fig.axes[0].get_window_extent(renderer))
    labels = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert all(not a.overlaps(b) for a, b in itertools.pairwise(labels))


def test_receipt_proves_each_update_against_the_run_and_refuses_forged_ones(
    ran: tuple[Run, Path],
    tmp_path: Path,
    federation: Federation,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, ca = ran
    kept = tmp_path / "receipts.jsonl"
    kept.write_text("".join(json.dumps(s.to_json()) + "\n" for s in run.kept["hospital_b"]))
    assert main(["receipt", str(kept), "--run", str(run.out), "--ca", str(ca)]) == 0
    assert capsys.readouterr().out.count("signed by the coordinator and credited in the run's chain") == 2

    forged = run.kept["hospital_b"][0].to_json()
    forged["receipt"]["round"] = 2
    (tmp_path / "forged.jsonl").write_text(json.dumps(forged) + "\n")
    assert main(["receipt", str(tmp_path / "forged.jsonl"), "--ca", str(ca)]) == 1
    assert "FAIL round 2: the receipt is for another update" in capsys.readouterr().out

    unlisted = issue_receipt(federation.server, federation_id="fed-test", round_number=1, hospital="hospital_b",
                             update=bytes(32), num_examples=10, chain_head=None)  # fmt: skip
    (tmp_path / "one.json").write_text(json.dumps(unlisted.to_json()))
    assert main(["receipt", str(tmp_path / "one.json"), "--ca", str(ca)]) == 0
    assert main(["receipt", str(tmp_path / "one.json"), "--run", str(run.out), "--ca", str(ca)]) == 1
    assert "the chain does not credit the update to the hospital in round 1" in capsys.readouterr().out
