"""The coordinator's side of its PyTorch helper process (``worker``): starts it when needed, starts it
again after a crash, and turns its replies into results or errors.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from typing import Any

from medfed.common.data.folders import DatasetInfo
from medfed.common.errors import USER_ERRORS, MedfedError, UnknownModelError
from medfed.common.limits import MODEL_NAMES
from medfed.common.tensors import EncodedModel
from medfed.server.history import TestResult
from medfed.server.model_helper.protocol import receive, send

log = logging.getLogger("medfed.server")

CLOSE_TIMEOUT_S = 5.0
"""an idle helper exits at once when its input closes; a busy one (the run was aborted) is killed"""


class ModelHostError(MedfedError, RuntimeError):
    """The helper process failed (it died, or a bug in it); its log lines are in the coordinator's log."""


class ModelHost:
    """The helper, started when needed. ``check`` first. Without a test set the helper runs only for
    ``check`` and again for ``initial_model`` (it is not kept while hospitals are awaited, which can
    take hours), and not at all during the rounds; with one it stays to evaluate every round."""

    def __init__(self, *, verbose: bool = False) -> None:
        self._command = [sys.executable, "-m", "medfed.server.model_helper.worker", *(["--verbose"] if verbose else [])]
        self._proc: subprocess.Popen[bytes] | None = None
        self._checked: dict[str, Any] | None = None
        """the check request, replayed to a helper started again"""
        self._closed = False
        self._has_test_set = False
        self.peak_rss_mb: float | None = None
        """the helper's peak resident memory, as of its last reply"""

    def __enter__(self) -> ModelHost:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, request: dict[str, Any], model: EncodedModel | None = None) -> tuple[Any, EncodedModel | None]:
        if self._closed:
            raise ModelHostError("the model helper has already been closed")
        if self._proc is None:
            self._proc = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            if self._checked is not None and request["op"] != "check":
                self._call(self._checked)
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            send(proc.stdin, request, model)
            reply = receive(proc.stdout)
        except (OSError, EOFError, ValueError) as exc:  # a broken pipe, a cut-off or garbled reply
            self._stop()  # the next call starts a new helper (the run goes on without this round's figures)
            raise ModelHostError(f"the model helper failed during {request['op']}: {exc}") from None
        if reply is None:
            status = proc.wait()
            self._stop()
            raise ModelHostError(f"the model helper exited during {request['op']} (status {status})")
        message, returned = reply
        self.peak_rss_mb = message.get("peak_rss_mb", self.peak_rss_mb)
        if "error" in message:
            kind = next((e for e in USER_ERRORS if e.__name__ == message.get("kind")), None)
            raise (kind or ModelHostError)(message["error"])
        return message["ok"], returned

    def check(
        self,
        *,
        model: str,
        dp: bool,
        test_data: str | None,
        image_size: int | None,
        device: str,
        pretrained: str | None,
        check_pretrained: bool,
    ) -> DatasetInfo | None:
        """Refuse what cannot work before hospitals join; returns the test set's description, if any.

        When nothing here needs PyTorch to be checked (no test set, no pretrained weights, no DP, the
        device auto or cpu: the model name is checked by the settings), no helper is started now: the
        request is only kept for the helper that builds the first model, so the coordinator listens
        seconds sooner."""
        request = {
            "op": "check",
            "model": model,
            "dp": dp,
            "test_data": test_data,
            "image_size": image_size,
            "device": device,
            "pretrained": pretrained,
            "check_pretrained": check_pretrained,
        }
        if test_data is None and pretrained is None and not dp and device in ("auto", "cpu"):
            if model not in MODEL_NAMES:
                raise UnknownModelError(f"unknown model {model!r}; choose one of {', '.join(MODEL_NAMES)}")
            self._checked, self._has_test_set = request, False
            return None
        result, _ = self._call(request)
        self._checked = {**request, "check_pretrained": False}  # a replay need not read the file twice
        self._has_test_set = result["info"] is not None
        if not self._has_test_set:
            self._stop()  # started again for the first model, once hospitals have joined
        return DatasetInfo.model_validate(result["info"]) if self._has_test_set else None

    def initial_model(self, info: DatasetInfo, seed: int) -> EncodedModel:
        _, model = self._call({"op": "init", "channels": info.channels, "num_classes": info.num_classes, "seed": seed})
        if model is None:
            raise ModelHostError("the model helper sent no model")
        if not self._has_test_set:
            log.info("first global model built; no test set, so the PyTorch helper exits (its peak: %s MB)",
                     self.peak_rss_mb)  # fmt: skip
            self.close()
        return model

    def evaluate(self, model: EncodedModel) -> TestResult | None:
        """``model`` on the test set; None when the run has no test set."""
        if not self._has_test_set:
            return None
        result, _ = self._call({"op": "evaluate"}, model)
        return TestResult.from_json(result)

    def close(self) -> None:
        """End the helper for good; idempotent."""
        self._closed = True
        self._stop()

    def _stop(self) -> None:
        """End the running helper, if any (it exits when its input closes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):  # it may have died already: nothing left to tell it
                proc.stdin.close()
        try:
            proc.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
