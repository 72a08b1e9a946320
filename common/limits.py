"""Limits and name registries, each defined once: what a peer may send, and the names a setting may
take, with their ``Literal`` types (so pydantic settings, argparse choices and code agree).

Sizes bound what either side accepts from the other before a byte of a model is kept; the registries
are the models, encodings, schedules, partition schemes and MedMNIST sizes the commands offer.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

# ----- what crosses the wire -----------------------------------------------------------------------
CHUNK_SIZE = 1 << 20
"""About 1 MiB per message: far below gRPC's 4 MiB default limit, large enough to keep per-message cost low."""
MESSAGE_LIMIT = 4 << 20
"""gRPC's default message limit, kept on both sides: models stream in chunks."""
MAX_MODEL_BYTES = 16 << 30
"""Largest model either side accepts (from a peer, and from the model helper over its pipe)."""
MAX_TENSORS = 20_000
MAX_NDIM = 16
MAX_TEXT = 128
"""Longest dataset name, task, class name, metric name or version string accepted from the other side."""
MAX_CLASSES = 1000
MAX_METRICS = 64
MAX_CERTIFICATE = 16 << 10
"""Longest certificate (PEM) accepted from the other side: relayed round keys, receipts."""
MAX_SIGNATURE = 160
"""Longest signature accepted: an ECDSA P-256 signature in DER is at most 72 bytes; room for larger curves."""
HOSPITAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A hospital's name: its identity in certificates, logs, history and file names."""

# ----- names a setting may take ---------------------------------------------------------------------
ModelName = Literal["cnn", "cnn_gn", "resnet18", "resnet18_gn"]
MODEL_NAMES: tuple[ModelName, ...] = get_args(ModelName)
Encoding = Literal["lossless", "fp16", "bf16", "int8"]
"""How a hospital may send its update (common/compression.py)."""
ENCODINGS: tuple[Encoding, ...] = get_args(Encoding)
LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[LrSchedule, ...] = get_args(LrSchedule)
Scheme = Literal["iid", "dirichlet", "exclude-classes"]
"""How fed-partition spreads a dataset's labels over hospitals (common/data/partition.py)."""
SCHEMES: tuple[Scheme, ...] = get_args(Scheme)
StrategyName = Literal[
    "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox", "scaffold", "fedbn", "median",
    "trimmed-mean", "krum", "multi-krum", "norm-bound",
]  # fmt: skip
"""fed-server --strategy (server/strategy/: one module each)"""
STRATEGIES: tuple[StrategyName, ...] = get_args(StrategyName)
LocalOptimizer = Literal["adam", "sgd"]
"""what a round may ask a hospital to train with (TrainConfig.optimizer); SCAFFOLD asks for plain SGD"""
LOCAL_OPTIMIZERS: tuple[LocalOptimizer, ...] = get_args(LocalOptimizer)
SCAFFOLD_CONTROL = "scaffold.control."
"""the prefix of SCAFFOLD's control-variate tensors beside the model's, in a task and in an update"""
MedmnistSize = Literal[28, 64, 128, 224]
MEDMNIST_SIZES: tuple[MedmnistSize, ...] = get_args(MedmnistSize)
