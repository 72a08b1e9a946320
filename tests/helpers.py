"""Shared test helpers: generated data and command-line runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from medfed.common.data.folders import DatasetInfo
from medfed.common.data.sources import SourceDataset
from medfed.common.ml.models import build_model
from medfed.common.ml.torch_state import to_numpy
from medfed.common.tensors import EncodedModel, encode
from medfed.server.history import TestResult
from medfed.tools.local_run import ProcessGroup


class InProcessModels:
    """The driver's Models without a helper process (what medfed.server.model_helper.worker does), no test set."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.peak_rss_mb: float | None = None

    def initial_model(self, info: DatasetInfo, seed: int) -> EncodedModel:
        torch.manual_seed(seed)
        return encode(to_numpy(build_model(self.model, info.channels, info.num_classes).state_dict()))

    def evaluate(self, model: EncodedModel) -> TestResult | None:
        return None


def synthetic_dataset(
    num_classes: int = 4, size: int = 12, per_class: tuple[int, int, int] = (60, 10, 40), seed: int = 0
) -> SourceDataset:
    """Noisy images whose class decides where a bright square sits: learnable in a round or two."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, count in zip(("train", "val", "test"), per_class, strict=True):
        labels = np.repeat(np.arange(num_classes), count)
        images = rng.integers(0, 70, size=(len(labels), size, size), dtype=np.uint8)
        half = size // 2
        for i, c in enumerate(labels):
            r, col = divmod(int(c) % 4, 2)
            images[i, r * half : (r + 1) * half, col * half : (col + 1) * half] += np.uint8(150 + 20 * (int(c) // 4))
        order = rng.permutation(len(labels))
        splits[split] = (images[order], labels[order].astype(np.int64))
    info = DatasetInfo(
        dataset="synthetic",
        task="multi-class",
        channels=1,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
        image_size=(size, size),
    )
    return SourceDataset(info, splits)


def start_server(procs: ProcessGroup, tmp: Path, *args: str, timeout: float = 60.0) -> int:
    """Start fed-server on a free port (port 0) and return the port it bound; --insecure unless TLS is given."""
    port_file = tmp / "server.port"
    security = [] if "--tls-cert" in args else ["--insecure"]
    procs.start("server", "medfed.server", *security, "--address", "127.0.0.1:0", "--port-file", str(port_file), *args)
    return procs.wait_for_port("server", port_file, timeout)


POLL_S = 0.05
T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, failure: Callable[[], str]) -> T:
    """Poll ``check`` every POLL_S until it returns something true and return that; fail with
    ``failure()`` once ``timeout`` seconds have passed. The one polling loop the tests share."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, failure()
        time.sleep(POLL_S)
    return value


def wait_for_log(procs: ProcessGroup, name: str, text: str, timeout: float = 120) -> None:
    """Poll ``name``'s log until it holds ``text``; fail early, with its log's end, if it exits first."""

    def logged() -> bool:
        assert procs.procs[name].poll() is None, f"{name} exited before logging {text!r}:\n{procs.tail(name)}"
        return text in procs.log(name)

    wait_until(logged, timeout, lambda: f"{name} did not log {text!r} in {timeout} s:\n{procs.tail(name)}")


def run_cli(
    module: str, *args: str, timeout: float = 120.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )


def write_image_folder(
    dataset: SourceDataset, root: Path, *, splits: tuple[str, ...] = ("train", "val", "test"), suffix: str = ".png"
) -> Path:
    """Export ``dataset`` as hospitals do: ROOT/SPLIT/CLASS/NNNN.png (every class folder made, even empty)."""
    from PIL import Image

    for split in splits:
        images, labels = dataset.splits[split]
        for name in dataset.info.class_names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(image).save(root / split / dataset.info.class_names[int(label)] / f"{i:05d}{suffix}")
    return root


def upload(stub: Any, messages: Iterable[Any], timeout: float = 30.0) -> Any:
    """A hospital's side of the Upload call for raw messages: the first (the header), then the rest once the
    coordinator admits the upload; returns the ``done`` reply (a SubmitReply), or raises the call's error."""
    stream = iter(messages)
    admitted, over = threading.Event(), threading.Event()

    def requests() -> Iterator[Any]:
        first = next(stream, None)
        if first is not None:
            yield first
        admitted.wait()
        if not over.is_set():
            yield from stream

    try:
        for reply in stub.Upload(requests(), timeout=timeout):
            if reply.WhichOneof("kind") == "admitted":
                admitted.set()
            else:
                return reply.done
    finally:
        over.set()
        admitted.set()
    raise AssertionError("the upload ended without a reply")
