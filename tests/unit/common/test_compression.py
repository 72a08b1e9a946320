"""Compressed updates: each encoding's round trip stays within the error bound common/compression.py states."""

from __future__ import annotations

import numpy as np
import pytest

from medfed.common.compression import FP16_MAX, DecodedUpdate, IncompatibleUpdate, check_form, encode_update
from medfed.common.tensors import StateDict, encode, from_chunks, is_float
from medfed.common.wire.convert import layout_from_proto, layout_to_proto

GLOBAL = {
    "conv.weight": np.random.default_rng(0).standard_normal((16, 3, 3, 3), dtype=np.float32),
    "bn.running_var": np.random.default_rng(1).random(16, dtype=np.float32) + np.float32(0.5),
    "bn.num_batches_tracked": np.array(40, dtype=np.int64),
    "fc.bias": np.zeros(4, dtype=np.float32),
}


def trained(scale: float = 0.05) -> StateDict:
    rng = np.random.default_rng(2)
    out = {k: (v + scale * rng.standard_normal(v.shape)).astype(v.dtype) if is_float(v.dtype) else v + 3
           for k, v in GLOBAL.items()}  # fmt: skip
    out["fc.bias"] = GLOBAL["fc.bias"].copy()  # a tensor the round left unchanged
    return out


def round_trip(state: StateDict, encoding: str) -> tuple[StateDict, int]:
    """Encode as a hospital would, send the table through protobuf, decode as the coordinator would."""
    encoded = encode_update(state, GLOBAL, encoding)  # type: ignore[arg-type]
    layout = layout_from_proto(layout_to_proto(encoded.layout), max_total_bytes=1 << 30)
    check_form(layout, encode(GLOBAL).layout, encoding, delta=encoding == "int8")  # type: ignore[arg-type]
    received = from_chunks(layout, encoded.chunks(chunk_size=100))
    decoded = DecodedUpdate(received, layout, GLOBAL)
    return {k: decoded[k] for k in decoded}, layout.total_bytes


def test_lossless_is_exact() -> None:
    state = trained()

    decoded, _ = round_trip(state, "lossless")

    assert all(np.array_equal(decoded[k], state[k]) and decoded[k].dtype == state[k].dtype for k in state)


@pytest.mark.parametrize(("encoding", "relative"), [("fp16", 2**-11), ("bf16", 2**-8)])
def test_half_precision_stays_within_its_relative_bound(encoding: str, relative: float) -> None:
    state = trained()

    decoded, nbytes = round_trip(state, encoding)

    for name, value in state.items():
        error = np.abs(decoded[name].astype(np.float64) - value.astype(np.float64))
        bound = np.maximum(np.abs(value.astype(np.float64)) * relative, 2**-25)
        assert bool((error <= bound).all()), name
    assert decoded["bn.num_batches_tracked"].dtype == np.int64
    assert np.array_equal(decoded["bn.num_batches_tracked"], state["bn.num_batches_tracked"])
    assert nbytes < encode(state).layout.total_bytes * 0.6


def test_int8_deltas_stay_within_half_a_step_of_the_per_tensor_scale() -> None:
    state = trained()

    decoded, nbytes = round_trip(state, "int8")

    for name, value in state.items():
        if not is_float(value.dtype):
            assert np.array_equal(decoded[name], value)
            continue
        delta = value.astype(np.float64) - GLOBAL[name].astype(np.float64)
        step = float(np.abs(delta).max()) / 127
        assert float(np.abs(decoded[name] - value.astype(np.float64)).max()) <= step / 2 + 1e-12, name
    assert np.array_equal(decoded["fc.bias"], GLOBAL["fc.bias"])  # unchanged stays exactly unchanged
    assert nbytes < encode(state).layout.total_bytes * 0.35


def test_fp16_sends_a_tensor_it_cannot_hold_losslessly() -> None:
    state = trained()
    state["bn.running_var"] = state["bn.running_var"] * (2 * FP16_MAX)

    encoded = encode_update(state, GLOBAL, "fp16")
    decoded, _ = round_trip(state, "fp16")

    dtypes = {t.name: t.dtype for t in encoded.layout.tensors}
    assert dtypes["bn.running_var"] == np.float32 and dtypes["conv.weight"] == np.float16
    assert np.array_equal(decoded["bn.running_var"], state["bn.running_var"])


def test_a_round_refuses_forms_it_did_not_ask_for() -> None:
    model = encode(GLOBAL).layout
    as_fp16 = encode_update(trained(), GLOBAL, "fp16").layout
    as_int8 = encode_update(trained(), GLOBAL, "int8").layout
    lossless = encode(trained()).layout

    check_form(lossless, model, "int8")  # lossless is always allowed
    with pytest.raises(IncompatibleUpdate, match="arrived as float16"):
        check_form(as_fp16, model, "lossless")
    with pytest.raises(IncompatibleUpdate, match="int8"):
        check_form(as_int8, model, "bf16")
    with pytest.raises(IncompatibleUpdate, match="not sent as deltas"):
        check_form(as_int8, model, "int8")
    with pytest.raises(IncompatibleUpdate, match="asked for lossless"):
        check_form(lossless, model, "lossless", delta=True)
    check_form(as_int8, model, "int8", delta=True)
    with pytest.raises(IncompatibleUpdate, match="missing"):
        check_form(encode({"conv.weight": GLOBAL["conv.weight"]}).layout, model, "lossless")
