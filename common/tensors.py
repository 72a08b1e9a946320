"""Models as numpy state dicts and their byte layout: a tensor table plus one byte stream, cut into
chunks to travel (``to_chunks``/``from_chunks``, a pair so the two directions cannot drift apart; the
tensor table's messages are in common/wire/convert.py).

Tensors are laid out back to back in one buffer, each starting at a 64-byte aligned offset: the
receiver preallocates that buffer, copies chunks straight into it and then views each tensor in
place, which needs aligned offsets. No pickle: the bytes are the tensors' raw little-endian elements
and nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from medfed.common.errors import WireFormatError, WireTooLarge
from medfed.common.limits import CHUNK_SIZE
from medfed.common.peer_text import quoted

ALIGNMENT = 64

StateDict = dict[str, np.ndarray]
"""A model as numpy arrays: the coordinator never imports PyTorch (hospitals convert at the edge, see
medfed.common.ml.torch_state), which keeps its memory at a few model sizes over its libraries' floor."""
Chunk = tuple[int, bytes]
"""(offset, data): a piece of a model's byte stream."""

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
DTYPES: tuple[np.dtype, ...] = (
    np.dtype(np.float32), np.dtype(np.float16), BFLOAT16, np.dtype(np.float64), np.dtype(np.int64),
    np.dtype(np.int32), np.dtype(np.int16), np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.bool_),
)  # fmt: skip
"""the element types a model may hold (each has a code on the wire)"""


def is_float(dtype: np.dtype) -> bool:
    """Floating point, bfloat16 included (numpy files ml_dtypes' bfloat16 under kind 'V')."""
    return dtype.kind == "f" or dtype == BFLOAT16


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
        if array.dtype not in DTYPES:
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


def in_order(layout: Layout, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
    """The chunks of a stream that ``layout`` describes, each checked to start where the previous one ended
    and to stay within the stream; refused (WireFormatError) at the first that does not, and at the end
    when the stream stopped short. Both receivers (into memory, into a file) read through this."""
    received = 0
    for offset, data in chunks:
        if offset != received:
            kind = "overlaps the previous one" if offset < received else "leaves a gap"
            raise WireFormatError(f"chunk at offset {offset} {kind}: the next chunk must start at {received}")
        end = received + len(data)
        if end > layout.total_bytes:
            raise WireTooLarge(f"stream longer than the {layout.total_bytes} bytes its header declared")
        yield offset, data
        received = end
    if received != layout.total_bytes:
        raise WireFormatError(f"stream ended after {received} of {layout.total_bytes} bytes")


def from_chunks(layout: Layout, chunks: Iterable[Chunk]) -> StateDict:
    """Reassemble a state dict; the returned tensors are views into one preallocated buffer.

    Chunks must arrive in order, each starting where the previous one ended."""
    _require_little_endian()
    buffer = np.empty(layout.total_bytes, dtype=np.uint8)
    for offset, data in in_order(layout, chunks):
        buffer[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
    return _views(buffer, layout)
