"""State dicts to and from the wire: a tensor table (the header) plus one byte stream sent in chunks.

Every conversion lives here as a pair (``to_chunks``/``from_chunks``, ``layout_to_proto``/
``layout_from_proto``) so the two directions cannot drift apart. Tensors are laid out back to back in
one buffer, each starting at a 64-byte aligned offset: the receiver preallocates that buffer, copies
chunks straight into it and then views each tensor in place, which needs aligned offsets. No pickle:
the bytes are the tensors' raw little-endian elements and nothing else.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from medfed.common.peer_text import quoted
from medfed.proto.v1 import federation_pb2 as pb

CHUNK_SIZE = 1 << 20
"""About 1 MiB per message: far below gRPC's 4 MiB default limit, large enough to keep per-message cost low."""

ALIGNMENT = 64
MAX_TENSORS = 20_000
MAX_NDIM = 16

StateDict = dict[str, np.ndarray]
"""A model as numpy arrays: the coordinator never imports PyTorch (hospitals convert at the edge, see
medfed.common.torch_state), which keeps its memory at a few model sizes over its libraries' floor."""
Chunk = tuple[int, bytes]
"""(offset, data): a piece of a model's byte stream."""

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
_TO_WIRE: dict[np.dtype, pb.DType.ValueType] = {
    np.dtype(np.float32): pb.DTYPE_FLOAT32,
    np.dtype(np.float16): pb.DTYPE_FLOAT16,
    BFLOAT16: pb.DTYPE_BFLOAT16,
    np.dtype(np.float64): pb.DTYPE_FLOAT64,
    np.dtype(np.int64): pb.DTYPE_INT64,
    np.dtype(np.int32): pb.DTYPE_INT32,
    np.dtype(np.int16): pb.DTYPE_INT16,
    np.dtype(np.int8): pb.DTYPE_INT8,
    np.dtype(np.uint8): pb.DTYPE_UINT8,
    np.dtype(np.bool_): pb.DTYPE_BOOL,
}
_FROM_WIRE: dict[pb.DType.ValueType, np.dtype] = {v: k for k, v in _TO_WIRE.items()}


def is_float(dtype: np.dtype) -> bool:
    """Floating point, bfloat16 included (numpy files ml_dtypes' bfloat16 under kind 'V')."""
    return dtype.kind == "f" or dtype == BFLOAT16


class WireFormatError(ValueError):
    """A header or byte stream that does not describe a valid model."""


class WireTooLarge(WireFormatError):
    """More data than allowed (too many tensors, too many bytes): the sender is refused, nothing is kept."""


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise WireFormatError("the wire format is little-endian and big-endian hosts are not supported")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    delta_scale: float = 0.0
    """> 0: an int8 delta from the round's global model (see common/compression.py)"""


@dataclass(frozen=True)
class Layout:
    """Where each tensor of a model sits in its byte stream."""

    tensors: tuple[TensorSpec, ...]
    total_bytes: int


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def layout_of(state: Mapping[str, np.ndarray], delta_scales: Mapping[str, float] | None = None) -> Layout:
    scales = delta_scales or {}
    specs = []
    offset = 0
    for name, value in state.items():
        array = np.asarray(value)  # numpy hands back 0-d results as scalars
        if array.dtype not in _TO_WIRE:
            raise WireFormatError(f"tensor {quoted(name)} has unsupported dtype {array.dtype}")
        offset = _align(offset)
        specs.append(TensorSpec(name, array.dtype, tuple(array.shape), offset, array.nbytes, scales.get(name, 0.0)))
        offset += array.nbytes
    return Layout(tuple(specs), offset)


@dataclass(frozen=True)
class EncodedModel:
    """A model serialised once, ready to be streamed to any number of receivers."""

    layout: Layout
    buffer: bytearray

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[Chunk]:
        view = memoryview(self.buffer)
        for start in range(0, len(self.buffer), chunk_size):
            yield start, bytes(view[start : start + chunk_size])

    def tensors(self) -> StateDict:
        """The model as views into this buffer, so that a holder of both keeps one copy of the weights."""
        return _views(np.frombuffer(self.buffer, dtype=np.uint8), self.layout)


def _views(flat: np.ndarray, layout: Layout) -> StateDict:
    return {
        spec.name: flat[spec.offset : spec.offset + spec.nbytes].view(spec.dtype).reshape(spec.shape)
        for spec in layout.tensors
    }


def encode(state: Mapping[str, np.ndarray], delta_scales: Mapping[str, float] | None = None) -> EncodedModel:
    _require_little_endian()
    layout = layout_of(state, delta_scales)
    encoded = EncodedModel(layout, bytearray(layout.total_bytes))
    for name, target in encoded.tensors().items():  # views into the buffer: one copy per tensor
        target[...] = state[name]
    return encoded


def to_chunks(state: Mapping[str, np.ndarray], chunk_size: int = CHUNK_SIZE) -> tuple[Layout, Iterator[Chunk]]:
    encoded = encode(state)
    return encoded.layout, encoded.chunks(chunk_size)


def from_chunks(layout: Layout, chunks: Iterable[Chunk]) -> StateDict:
    """Reassemble a state dict; the returned tensors are views into one preallocated buffer.

    Chunks must arrive in order, each starting where the previous one ended."""
    _require_little_endian()
    buffer = np.empty(layout.total_bytes, dtype=np.uint8)
    received = 0
    for offset, data in chunks:
        if offset != received:
            kind = "overlaps the previous one" if offset < received else "leaves a gap"
            raise WireFormatError(f"chunk at offset {offset} {kind}: the next chunk must start at {received}")
        end = received + len(data)
        if end > layout.total_bytes:
            raise WireTooLarge(f"stream longer than the {layout.total_bytes} bytes its header declared")
        buffer[received:end] = np.frombuffer(data, dtype=np.uint8)
        received = end
    if received != layout.total_bytes:
        raise WireFormatError(f"stream ended after {received} of {layout.total_bytes} bytes")
    return _views(buffer, layout)


def layout_to_proto(layout: Layout) -> pb.ModelHeader:
    return pb.ModelHeader(
        tensors=[
            pb.TensorSpec(
                name=t.name,
                dtype=_TO_WIRE[t.dtype],
                shape=t.shape,
                offset=t.offset,
                nbytes=t.nbytes,
                delta_scale=t.delta_scale,
            )
            for t in layout.tensors
        ],
        total_bytes=layout.total_bytes,
    )


def layout_from_proto(header: pb.ModelHeader, *, max_total_bytes: int) -> Layout:
    """Validate a received header completely before a single byte of the model is accepted."""
    total = header.total_bytes
    if total < 0:
        raise WireFormatError(f"negative model size {total}")
    if total > max_total_bytes:
        raise WireTooLarge(f"model of {total} bytes exceeds the allowed {max_total_bytes}")
    if len(header.tensors) > MAX_TENSORS:
        raise WireTooLarge(f"{len(header.tensors)} tensors exceed the limit of {MAX_TENSORS}")
    specs: list[TensorSpec] = []
    names: set[str] = set()
    for t in header.tensors:
        if not t.name or t.name in names:
            raise WireFormatError(f"tensor name {quoted(t.name)} is empty or repeated")
        names.add(t.name)
        dtype = _FROM_WIRE.get(t.dtype)
        if dtype is None:
            raise WireFormatError(f"tensor {quoted(t.name)} has unknown dtype code {t.dtype}")
        shape = tuple(int(d) for d in t.shape)
        if len(shape) > MAX_NDIM or any(d < 0 for d in shape):
            raise WireFormatError(f"tensor {quoted(t.name)} has invalid shape {shape[: MAX_NDIM + 1]}")
        itemsize = dtype.itemsize
        if t.nbytes != math.prod(shape) * itemsize:
            raise WireFormatError(f"tensor {quoted(t.name)}: {t.nbytes} bytes do not match shape {shape} of {dtype}")
        if t.offset < 0 or t.offset % itemsize or t.offset + t.nbytes > total:
            raise WireFormatError(f"tensor {quoted(t.name)} has an invalid offset {t.offset}")
        scale = t.delta_scale
        if not (math.isfinite(scale) and scale >= 0) or (scale > 0 and dtype != np.int8):
            raise WireFormatError(f"tensor {quoted(t.name)} has an invalid delta scale {scale} for {dtype}")
        specs.append(TensorSpec(t.name, dtype, shape, t.offset, t.nbytes, scale))
    ordered = sorted((s for s in specs if s.nbytes), key=lambda s: s.offset)
    for before, after in itertools.pairwise(ordered):
        if before.offset + before.nbytes > after.offset:
            raise WireFormatError(f"tensors {quoted(before.name)} and {quoted(after.name)} overlap")
    return Layout(tuple(specs), total)
