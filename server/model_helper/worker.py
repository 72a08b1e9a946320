"""The coordinator's PyTorch helper: builds the initial global model and evaluates each round's model.

Started by the coordinator (host.py) as ``python -m medfed.server.model_helper.worker``, it is
the only server-side process that imports PyTorch: the coordinator itself stays at its libraries' ~70 MB plus a
few model sizes, whatever the number of hospitals. Requests come on stdin and replies go to stdout in
model_helper/protocol.py's framing (JSON lines, models as tensor table plus raw bytes, never pickled).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from medfed.common.cli import setup_logging
from medfed.common.data.folders import DatasetInfo, Split
from medfed.common.data.image_folder import load_hospital
from medfed.common.errors import USER_ERRORS, ConfigError
from medfed.common.ml.models import build_model, dp_model_problem
from medfed.common.ml.pretrained import load_pretrained
from medfed.common.ml.torch_state import to_numpy, to_torch
from medfed.common.ml.training import evaluate, pick_device
from medfed.common.tensors import EncodedModel, encode
from medfed.server.history import TestResult
from medfed.server.memory import peak_rss_mb
from medfed.server.model_helper.protocol import receive, send

log = logging.getLogger("medfed.server")


class Worker:
    """What the helper keeps between requests: the model's settings and the test set."""

    def __init__(self) -> None:
        self.model = ""
        self.pretrained: Path | None = None
        self.device = torch.device("cpu")
        self.test: Split | None = None
        self.info: DatasetInfo | None = None
        self._network: nn.Module | None = None
        """built at the first evaluation, loaded with each round's weights after that"""

    def check(self, request: dict[str, Any]) -> dict[str, Any]:
        """Everything that can be refused before hospitals join: model, DP fit, device, test set, weights."""
        self.model = request["model"]
        probe = build_model(self.model, 1, 2)  # an unknown name fails here, before hospitals join
        if request["dp"] and (problem := dp_model_problem(probe)):
            raise ConfigError(f"--model {self.model} cannot be used with differential privacy: {problem}")
        self.device = pick_device(request["device"])
        if request["test_data"] is not None:
            data = load_hospital(Path(request["test_data"]), require=("test",), image_size=request["image_size"])
            self.test, self.info = data.split("test"), data.info
        if request["pretrained"] is not None:
            self.pretrained = Path(request["pretrained"])
            if request["check_pretrained"]:  # refuse a wrong file now, not when hospitals have joined
                channels, classes = (self.info.channels, self.info.num_classes) if self.info else (3, 2)
                load_pretrained(build_model(self.model, channels, classes), self.pretrained)
        return {"info": self.info.model_dump(mode="json") if self.info else None}

    def init(self, request: dict[str, Any], _: EncodedModel | None) -> tuple[dict[str, Any], EncodedModel]:
        torch.manual_seed(request["seed"])
        network = build_model(self.model, request["channels"], request["num_classes"])
        if self.pretrained is not None:
            load_pretrained(network, self.pretrained)
        return {}, encode(to_numpy(network.state_dict()))

    def evaluate(self, _: dict[str, Any], model: EncodedModel | None) -> tuple[dict[str, Any], None]:
        if self.test is None or self.info is None or model is None:
            raise ConfigError("evaluate needs a test set and a model")
        if self._network is None:
            self._network = build_model(self.model, self.info.channels, self.info.num_classes)
        self._network.load_state_dict(to_torch(model.tensors()))
        result = evaluate(self._network, self.test, self.info.num_classes, self.device)
        return TestResult(
            loss=result.loss,
            accuracy=result.accuracy,
            auc=result.auc,
            per_class_accuracy=dict(zip(self.info.class_names, result.per_class_accuracy, strict=True)),
            test_examples=result.num_examples,
            confusion_matrix=result.confusion,
        ).to_json(), None


Op = Callable[[dict[str, Any], EncodedModel | None], tuple[dict[str, Any], EncodedModel | None]]


def answer(
    worker: Worker, request: dict[str, Any], model: EncodedModel | None
) -> tuple[dict[str, Any], EncodedModel | None]:
    """One reply: ``ok`` with the result, or ``error`` naming a user error's class or an internal one."""
    ops: dict[str, Op] = {
        "check": lambda r, _: (worker.check(r), None),
        "init": worker.init,
        "evaluate": worker.evaluate,
    }
    try:
        result, returned = ops[request["op"]](request, model)
        return {"ok": result, "peak_rss_mb": peak_rss_mb()}, returned
    except USER_ERRORS as exc:
        return {"error": str(exc), "kind": type(exc).__name__}, None
    except Exception as exc:  # a bug: the traceback goes to the coordinator's log
        log.error("model helper failed:\n%s", traceback.format_exc())
        return {"error": f"{type(exc).__name__}: {exc}", "kind": "internal"}, None


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    worker = Worker()
    while (message := receive(requests)) is not None:
        send(replies, *answer(worker, *message))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medfed.server.model_helper.worker", description=__doc__)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle; it closes stdin
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the replies
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
