"""The driver: wait for hospitals, run the rounds, evaluate, record, write the final model.

It talks to hospitals only through the Coordinator, so it runs the same under gRPC and in unit tests.

A round whose aggregate is unusable (a NaN or an infinity in it, or a test-set evaluation that fails
or gives a non-finite loss) does not end the run: the round is recorded as failed, with the reason, the
previous global model is kept and sent again, and the federation goes on. Accepted updates are
already checked (server/admission.py); this is the last line for what only the aggregate shows.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from medfed.common import __version__
from medfed.common.data.folders import DatasetInfo
from medfed.common.errors import MedfedError, UnusableModel
from medfed.common.messages import ModelSpec, TrainSettings
from medfed.common.peer_text import quoted
from medfed.common.provenance.digests import model_digest
from medfed.common.tensors import EncodedModel, StateDict, encode
from medfed.common.training_plan import NORMALIZATION, lr_factor
from medfed.server.admission import first_unusable
from medfed.server.audit_log import AuditLog
from medfed.server.config import ServerConfig
from medfed.server.control import RunControl
from medfed.server.coordinator import Coordinator
from medfed.server.history import RoundRecord, TestResult
from medfed.server.memory import peak_rss_mb
from medfed.server.model_helper.host import ModelHostError
from medfed.server.privacy_record import PrivacyRecorder
from medfed.server.report import write_report
from medfed.server.rounds import RoundOutcome, Task
from medfed.server.run_dir import CHECKPOINT_MODEL, Checkpoint, Resumed, RunDir
from medfed.server.secure_rounds import run_secure_round, secure_parameters
from medfed.server.strategy import NO_STATE, AggregationError, SendsTensors, Strategy, StrategyState
from medfed.server.strategy.central_dp import DpFedAvg
from medfed.server.strategy.registry import build_strategy, central_strategy, local_requests
from medfed.server.strategy.registry import warnings as strategy_warnings

log = logging.getLogger("medfed.server")


class Models(Protocol):
    """Where PyTorch lives for the driver (medfed.server.model_helper.host runs it in a helper process)."""

    peak_rss_mb: float | None
    """the helper process's peak memory as last reported (None in-process)"""

    def initial_model(self, info: DatasetInfo, seed: int) -> EncodedModel:
        """The first global model, for hospitals whose data ``info`` describes."""
        ...

    def evaluate(self, model: EncodedModel) -> TestResult | None:
        """``model`` on the test set; None when the run has no test set."""
        ...


JOIN_LOG_INTERVAL = 30.0


class FederationAborted(MedfedError):
    """The run was stopped (signal, or no hospitals in time) before its last round."""


def choose(hospitals: list[str], count: int | None, rng: random.Random) -> list[str]:
    if count is None or count >= len(hospitals):
        return list(hospitals)
    return sorted(rng.sample(hospitals, count))


def _wait_for_hospitals(cfg: ServerConfig, coordinator: Coordinator) -> DatasetInfo:
    deadline = time.monotonic() + cfg.join_timeout
    coordinator.monitor.phase("waiting for hospitals", deadline_in=cfg.join_timeout)
    log.info("waiting for %d hospital(s) to join", cfg.min_clients)
    while True:
        present = coordinator.wait_for_hospitals(cfg.min_clients, min(JOIN_LOG_INTERVAL, deadline - time.monotonic()))
        if coordinator.finished is not None:
            raise FederationAborted(coordinator.finished.reason)
        if len(present) >= cfg.min_clients:
            break
        if time.monotonic() >= deadline:
            raise FederationAborted(
                f"only {len(present)} of {cfg.min_clients} hospitals joined within {cfg.join_timeout:.0f} s"
            )
        log.info("%d of %d hospitals joined: %s", len(present), cfg.min_clients, ", ".join(present) or "none yet")
    info = coordinator.data_info
    assert info is not None
    return info


def _run_round(
    cfg: ServerConfig,
    coordinator: Coordinator,
    task: Task,
    strategy: Strategy,
    run: _Run,
    selected: list[str],
) -> RoundOutcome:
    min_fit = cfg.effective_min_fit
    enough = cfg.clients_per_round if cfg.over_select else None
    accumulator = strategy.begin(run.global_state, None if run.strategy_state.empty else run.strategy_state)
    coordinator.open_round(task, selected, accumulator, min_fit, enough)
    coordinator.monitor.round_opened(task.round, selected, cfg.round_timeout)
    outcome = coordinator.wait_for_round(time.monotonic() + cfg.round_timeout)
    while len(outcome.contributions) < min_fit and coordinator.finished is None:
        late = ", ".join(outcome.missing) or "none"
        line = (
            f"round {task.round}: {len(outcome.contributions)} of {len(outcome.contributions) + len(outcome.missing)} "
            f"hospitals reported within {cfg.round_timeout:.0f} s (need {min_fit}; waiting on {late}); waiting another "
            f"{cfg.round_timeout:.0f} s"
        )
        log.warning(
            "%s (to go on with fewer hospitals, stop the coordinator and continue with --resume --min-fit N)", line
        )
        coordinator.monitor.event("timeout", line)
        coordinator.monitor.phase("training", deadline_in=cfg.round_timeout)
        coordinator.add_to_round(coordinator.hospitals())
        outcome = coordinator.wait_for_round(time.monotonic() + cfg.round_timeout)
    outcome = coordinator.close_round()
    coordinator.monitor.phase("evaluating")
    if coordinator.finished is not None:
        accumulator.close()
        raise FederationAborted(coordinator.finished.reason)
    if outcome.missing:
        log.warning("round %d: closed without %s", task.round, ", ".join(outcome.missing))
    return outcome


def _task_payload(strategy: Strategy, run: _Run) -> EncodedModel:
    """The global model, and what the strategy sends beside it (SCAFFOLD's control variate)."""
    if not isinstance(strategy, SendsTensors):
        return run.payload
    state = None if run.strategy_state.empty else run.strategy_state
    return encode({**run.global_state, **strategy.task_tensors(run.global_state, state)})


def _adopt(outcome: RoundOutcome, models: Models) -> tuple[EncodedModel, TestResult | None] | str:
    """The round's new global model and its test metrics, or why the model cannot be adopted."""
    try:
        state = outcome.accumulator.result()
    except AggregationError as exc:
        return f"aggregation failed: {exc}"
    if (bad := first_unusable(state)) is not None:
        return f"the aggregated model's tensor {quoted(bad)} holds NaN or infinite values"
    candidate = encode(state)
    try:
        metrics = models.evaluate(candidate)
    except (ModelHostError, UnusableModel) as exc:
        return f"evaluating the aggregated model on the test set failed: {exc}"
    if metrics is not None and not math.isfinite(metrics.loss):
        return "the aggregated model's test loss is not finite"
    return candidate, metrics


def _describe(record: RoundRecord, rounds: int) -> str:
    line = (
        f"round {record.round}/{rounds}: {record.num_clients} hospitals, {record.num_examples} examples, "
        f"{record.duration_s:.2f} s"
    )
    if record.failed is not None:
        return f"{line}, FAILED: {record.failed}; the previous global model is kept and the federation goes on"
    if record.test is not None:
        line += f", test accuracy {record.test.accuracy:.4f}, loss {record.test.loss:.4f}"
    return line + PrivacyRecorder.describe(record)


@dataclass
class _Run:
    """The state that carries from round to round, and so goes into every checkpoint."""

    completed: int
    payload: EncodedModel
    """the global model, serialised once per round for every hospital"""
    rng: random.Random
    strategy_state: StrategyState
    """the strategy's ``next_state`` after the last round (central DP's clipping bound)"""
    privacy: PrivacyRecorder
    last_eval: TestResult | None
    model_digest: str = ""
    """the global model's digest (common/provenance/digests.py), for the audit chain"""

    @property
    def global_state(self) -> StateDict:
        """Views into ``payload``: the coordinator holds one copy of the global model, not two."""
        return self.payload.tensors()


def _start(
    cfg: ServerConfig,
    info: DatasetInfo,
    models: Models,
    central: DpFedAvg | None,
    resume: Resumed | None,
) -> _Run:
    privacy = PrivacyRecorder(central, cfg.central_delta)
    if resume is None:
        first = models.initial_model(info, cfg.seed)
        return _Run(0, first, random.Random(cfg.seed), NO_STATE, privacy, None, model_digest(first.tensors()))
    checkpoint = resume.checkpoint
    rng = random.Random()
    version, internal, gauss = checkpoint.rng_state
    rng.setstate((version, tuple(internal), gauss))
    privacy.restore(checkpoint.privacy)
    log.info("resuming after round %d of %d", checkpoint.round, cfg.rounds)
    last_eval = TestResult.from_json(checkpoint.last_eval) if checkpoint.last_eval else None
    return _Run(checkpoint.round, encode(resume.model), rng, resume.strategy, privacy, last_eval,
                model_digest(resume.model))  # fmt: skip


def _checkpoint(cfg: ServerConfig, coordinator: Coordinator, run_dir: RunDir, run: _Run, info: DatasetInfo) -> None:
    version, internal, gauss = run.rng.getstate()
    checkpoint = Checkpoint(
        round=run.completed,
        model_file=CHECKPOINT_MODEL.format(run.completed),
        federation_id=coordinator.federation_id,
        data=info.model_dump(mode="json"),
        settings=cfg.resume_settings(),
        rng_state=[version, list(internal), gauss],
        strategy={},
        privacy=run.privacy.state(),
        last_eval=run.last_eval.to_json() if run.last_eval is not None else {},
    )
    run_dir.save_checkpoint(checkpoint, run.global_state, run.strategy_state)


def _record(
    cfg: ServerConfig,
    coordinator: Coordinator,
    strategy: Strategy,
    run: _Run,
    outcome: RoundOutcome,
    duration_s: float,
    models: Models,
    adopted: TestResult | str | None,
) -> RoundRecord:
    """The round's history line; ``adopted``: the new model's test result, or why it was not adopted."""
    contributions = outcome.contributions
    tested = None if isinstance(adopted, str) else adopted
    privacy, epsilon = run.privacy.round(outcome.accumulator.central, contributions)
    class_accuracy = None
    if tested is not None:
        classes = sorted(coordinator.hospital_classes().items())
        class_accuracy = {name: tested.class_subset_accuracy(mine) for name, mine in classes}
    return RoundRecord(
        round=outcome.round,
        clients=[c.name for c in contributions],
        num_examples=sum(c.num_examples for c in contributions),
        duration_s=round(duration_s, 4),
        bytes_down=outcome.bytes_sent,
        bytes_up=outcome.bytes_received,
        server_peak_rss_mb=peak_rss_mb(),
        model_helper_peak_rss_mb=models.peak_rss_mb,
        client_metrics={c.name: {"num_examples": c.num_examples, **c.metrics} for c in contributions},
        missing=outcome.missing,
        test=tested,
        hospital_class_accuracy=class_accuracy,
        failed=adopted if isinstance(adopted, str) else None,
        update_encoding=cfg.update_encoding if cfg.update_encoding != "lossless" else None,
        strategy=strategy.name,
        privacy=privacy,
        epsilon=epsilon,
    )


def _metadata(
    cfg: ServerConfig, info: DatasetInfo, strategy: Strategy, run: _Run, audit: AuditLog
) -> dict[str, object]:
    """model.json: what the final model is, how it was made, and its privacy."""
    metrics = run.last_eval.to_json() if run.last_eval is not None else {}
    return {
        "format": "medfed-model/1",
        "model": cfg.model,
        "in_channels": info.channels,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "image_size": list(info.image_size),
        "dataset": info.dataset,
        "task": info.task,
        "normalization": NORMALIZATION,
        "round": run.completed,
        "strategy": strategy.name,
        "strategy_settings": strategy.describe(),
        "privacy": run.privacy.summary(),
        "metrics": {k: v for k, v in metrics.items() if k != "confusion_matrix"},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "medfed_version": __version__,
        "audit": audit.summary(),
    }


def run_federation(
    cfg: ServerConfig,
    coordinator: Coordinator,
    run_dir: RunDir,
    models: Models,
    resume: Resumed | None = None,
    control: RunControl | None = None,
    audit: AuditLog | None = None,
) -> int:
    """Run every round (after the checkpoint's, when resuming); returns the number completed.

    ``control`` carries what an operator changes meanwhile (fed-admin extend moves the last round);
    ``audit`` the chain the rounds are recorded in (by default an unsigned one in the run folder).
    Raises FederationAborted when stopped early; the last completed round is checkpointed."""
    control = control or RunControl(coordinator, cfg.rounds)
    audit = audit or AuditLog(run_dir.audit_path, coordinator.federation_id)
    if resume is not None:  # before the wait for hospitals: a chain that does not verify stops the run now
        audit.resume(resume.checkpoint.round, model_digest(resume.model))
    central = central_strategy(cfg) if cfg.dp_central else None
    strategy = central or build_strategy(cfg)
    for warning in strategy_warnings(cfg):  # before the wait for hospitals, which may be long
        log.warning("%s", warning)
    if evaluation := strategy.describe().get("evaluation"):
        log.info("%s: %s", strategy.name, evaluation)
    monitor = coordinator.monitor
    privacy = "central" if cfg.dp_central else "local" if cfg.dp_local else "none"
    monitor.configure(federation_id=coordinator.federation_id, strategy=strategy.name, total_rounds=control.rounds,
                      privacy=privacy)  # fmt: skip
    if resume is not None:
        monitor.restore(run_dir.history())
    info = _wait_for_hospitals(cfg, coordinator)
    monitor.set_class_names(info.class_names)
    run = _start(cfg, info, models, central, resume)
    if resume is None:
        audit.start(run.model_digest, {"rounds": cfg.rounds, **cfg.resume_settings()})
    model_spec = ModelSpec(cfg.model, info.channels, info.num_classes)
    requests = local_requests(cfg)
    if central is not None:
        clip = run.strategy_state.values.get("clip", central.initial_clip)
        log.info("central DP: C=%g, σ=%g, δ=%.2g per hospital", clip, cfg.dp_noise_multiplier, run.privacy.delta)
    round_number = run.completed
    while round_number < control.rounds:
        round_number += 1
        rounds = control.rounds
        started = time.monotonic()
        wanted = cfg.clients_per_round + cfg.over_select if cfg.clients_per_round else None
        selected = choose(coordinator.hospitals(), wanted, run.rng)
        settings = TrainSettings(
            cfg.local_epochs,
            cfg.lr * lr_factor(cfg.lr_schedule, round_number - 1, rounds),
            cfg.batch_size,
            seed=cfg.seed * 100_003 + round_number,
            local_dp=cfg.local_dp_request,
            augment=cfg.augment,
            update_encoding=cfg.update_encoding,
            optimizer=requests.optimizer,
            proximal_mu=requests.proximal_mu,
            scaffold=requests.scaffold,
            local_normalization=requests.local_normalization,
            secure_aggregation=secure_parameters(cfg, coordinator, selected, run.global_state)
            if cfg.secure_aggregation
            else None,
        )
        task = Task(round_number, rounds, settings, model_spec, _task_payload(strategy, run))
        model_in = run.model_digest
        task_digest = model_digest(task.payload.tensors()) if task.payload is not run.payload else None
        if cfg.secure_aggregation:
            outcome = run_secure_round(cfg, coordinator, task, coordinator.federation_id, run.global_state)
            if coordinator.finished is not None:
                outcome.accumulator.close()
                raise FederationAborted(coordinator.finished.reason)
        else:
            outcome = _run_round(cfg, coordinator, task, strategy, run, selected)
        del task
        adopted = _adopt(outcome, models)
        if not isinstance(adopted, str):
            run.payload, tested = adopted
            run.last_eval = tested or run.last_eval
            run.model_digest = model_digest(run.global_state)
        run.strategy_state = outcome.accumulator.next_state  # moves on even when the model was not adopted
        verdict = adopted if isinstance(adopted, str) else adopted[1]
        del adopted
        record = _record(cfg, coordinator, strategy, run, outcome, time.monotonic() - started, models, verdict)
        audit.round(outcome, model_in=model_in, model=run.model_digest, task=task_digest,
                    strategy=strategy.describe(), secure=cfg.secure_aggregation, failed=record.failed)  # fmt: skip
        run_dir.append_history(record)
        run.completed = round_number
        _checkpoint(cfg, coordinator, run_dir, run, info)
        monitor.round_done(record)
        monitor.event("checkpoint", f"round {round_number} checkpointed")
        (log.error if record.failed else log.info)("%s", _describe(record, rounds))
        outcome.accumulator.close()
        del outcome, verdict  # the accumulator holds the round's result: a second copy of the model until then
    coordinator.finish("all rounds completed", run.completed)
    monitor.phase("finished")
    monitor.event("finished", f"all {run.completed} rounds completed")
    path = run_dir.save_model(run.global_state, _metadata(cfg, info, strategy, run, audit))
    log.info("final model written to %s", path)
    title = f"Federated {strategy.name} of {cfg.model} on {info.dataset}"
    note = str(strategy.describe().get("evaluation", ""))
    written = write_report(run_dir.directory, run_dir.history(), info, coordinator.hospital_classes(), title=title,
                           evaluation_note=note)  # fmt: skip
    if written:
        log.info("report written to %s (with %s)", written[0], ", ".join(p.name for p in written[1:]))
    return run.completed
