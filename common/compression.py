"""Lossy update encodings a coordinator may ask for, to send fewer bytes up: fp16, bf16 and int8 deltas.

Only floating-point tensors are compressed; integer and bool tensors (BatchNorm's counters) travel as
they are, and a tensor that an encoding cannot hold (float16 overflows beyond 65504) is sent
losslessly. The receiver learns each tensor's form from the tensor table alone (its dtype, and for
int8 deltas a positive ``delta_scale``), so a hospital may always fall back to lossless.

Error bounds per element x (tested in tests/unit/common/test_compression.py):
- fp16: |x' - x| <= 2**-11 |x| where |x| >= 2**-14 (float16's normal range), <= 2**-25 below it.
- bf16: |x' - x| <= 2**-8 |x| (float32's range, 8 bits of precision).
- int8: |x' - x| <= s / 2 with s = max|x - g| / 127 per tensor, g the round's global model; the
  coordinator rebuilds g + q s in float64, so nothing else is lost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from medfed.common.errors import MedfedError
from medfed.common.limits import Encoding
from medfed.common.peer_text import listed, quoted
from medfed.common.tensors import BFLOAT16, EncodedModel, Layout, encode, is_float

FP16_MAX = 65504.0
INT8_LEVELS = 127

_CAST: dict[str, np.dtype] = {"fp16": np.dtype(np.float16), "bf16": BFLOAT16}


class IncompatibleUpdate(MedfedError, ValueError):
    """An update whose tensors are not the model's, or not in a form this round allows."""


def encode_update(
    state: Mapping[str, np.ndarray], global_state: Mapping[str, np.ndarray], encoding: Encoding
) -> EncodedModel:
    """Serialise a hospital's update in ``encoding`` (``global_state``: the model it was sent)."""
    if encoding == "lossless":
        return encode(state)
    out: dict[str, np.ndarray] = {}
    scales: dict[str, float] = {}
    for name, value in state.items():
        if not is_float(value.dtype):
            out[name] = value
        elif encoding == "int8":
            out[name], scales[name] = _int8_delta(value, global_state[name])
        elif encoding == "fp16" and value.size and float(np.abs(value).max()) > FP16_MAX:
            out[name] = value  # would overflow to infinity: sent losslessly
        else:
            out[name] = value.astype(_CAST[encoding])
    return encode(out, delta_scales=scales)


INT8_BLOCK = 1 << 16
"""elements quantized at a time: the float64 scratch of one block (512 KiB) stays in the CPU's cache"""


def _int8_delta(value: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, float]:
    """The int8 difference of ``value`` from ``base`` and its scale, computed in float64 a block at a time
    (the same numbers as whole-array float64 arithmetic, without 88 MB temporaries for ResNet-18)."""
    flat_value, flat_base = value.reshape(-1), base.reshape(-1)
    scratch = np.empty(min(INT8_BLOCK, flat_value.size), dtype=np.float64)

    def delta(start: int) -> np.ndarray:
        stop = min(start + INT8_BLOCK, flat_value.size)
        d = scratch[: stop - start]
        np.subtract(flat_value[start:stop], flat_base[start:stop], out=d, dtype=np.float64)
        return d

    largest = max((float(np.abs(delta(start)).max()) for start in range(0, flat_value.size, INT8_BLOCK)),
                  default=0.0)  # fmt: skip
    scale = largest / INT8_LEVELS if largest > 0 else 1.0  # an unchanged tensor: all zeros, any scale
    q = np.empty(flat_value.size, dtype=np.int8)
    for start in range(0, flat_value.size, INT8_BLOCK):
        d = delta(start)
        np.divide(d, scale, out=d)
        np.rint(d, out=d)
        np.clip(d, -INT8_LEVELS, INT8_LEVELS, out=d)
        q[start : start + d.size] = d
    return q.reshape(value.shape), scale


def check_form(layout: Layout, expected: Layout, encoding: Encoding, *, delta: bool = False) -> None:
    """Refuse, before a byte is read, an update whose tensor table is not the model's in a form
    ``encoding`` allows (lossless is always allowed). ``delta``: the update says it holds deltas."""
    if delta and encoding != "int8":
        raise IncompatibleUpdate(f"a delta update, but this round asked for {encoding} updates")
    if not delta and (marked := next((t.name for t in layout.tensors if t.delta_scale > 0), None)):
        raise IncompatibleUpdate(f"tensor {quoted(marked)} is an int8 delta in an update not sent as deltas")
    got = {t.name: t for t in layout.tensors}
    want = {t.name: t for t in expected.tensors}
    if got.keys() != want.keys():
        missing, extra = sorted(want.keys() - got.keys())[:3], sorted(got.keys() - want.keys())[:3]
        raise IncompatibleUpdate(
            f"the update's tensors differ from the model's (missing {listed(missing)}, unexpected {listed(extra)})"
        )
    for name, spec in got.items():
        model = want[name]
        if spec.shape != model.shape:
            raise IncompatibleUpdate(f"tensor {quoted(name)} has shape {spec.shape}, the model's is {model.shape}")
        if spec.dtype == model.dtype and spec.delta_scale == 0:
            continue
        allowed = is_float(model.dtype) and (
            (encoding in _CAST and spec.dtype == _CAST[encoding] and spec.delta_scale == 0)
            or (encoding == "int8" and spec.dtype == np.int8 and spec.delta_scale > 0)
        )
        if allowed and spec.delta_scale * INT8_LEVELS > float(np.finfo(model.dtype).max):
            raise IncompatibleUpdate(
                f"tensor {quoted(name)} has an int8 delta scale of {spec.delta_scale:g}: its deltas would leave "
                f"the range of {model.dtype}"
            )
        if not allowed:
            form = f"{spec.dtype}" + (f" delta (scale {spec.delta_scale:g})" if spec.delta_scale else "")
            raise IncompatibleUpdate(
                f"tensor {quoted(name)} arrived as {form}; this round takes {model.dtype}"
                + (f" or its {encoding} form" if encoding != "lossless" else "")
            )


class DecodedUpdate(Mapping[str, np.ndarray]):
    """An update as full values, each int8 delta rebuilt in float64 only when it is read, so that
    folding it holds one rebuilt tensor at a time rather than a second copy of the model."""

    def __init__(self, state: Mapping[str, np.ndarray], layout: Layout, global_state: Mapping[str, np.ndarray]) -> None:
        self._state, self._global = state, global_state
        self._scales = {t.name: t.delta_scale for t in layout.tensors if t.delta_scale > 0}

    def __getitem__(self, name: str) -> np.ndarray:
        value = self._state[name]
        scale = self._scales.get(name)
        if scale is None:
            return value
        q, base = value.reshape(-1), self._global[name].reshape(-1)
        rebuilt = np.empty(q.size, dtype=np.float64)
        for start in range(0, q.size, INT8_BLOCK):  # a block at a time, in cache: same numbers, one pass
            block = rebuilt[start : start + INT8_BLOCK]
            np.multiply(q[start : start + INT8_BLOCK], scale, out=block, dtype=np.float64)
            block += base[start : start + INT8_BLOCK]
        return rebuilt.reshape(value.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)

    def is_delta(self, name: str) -> bool:
        return name in self._scales

    def magnitude_bound(self, name: str) -> float:
        """An upper bound of |value| over a rebuilt delta tensor, without rebuilding it: max|g| + 127 s."""
        base = self._global[name]
        return (float(np.abs(base).max()) if base.size else 0.0) + INT8_LEVELS * self._scales[name]
