"""Compressed updates: each encoding's round trip stays within the error bound common/compression.py states."""

from __future__ import annotations

import pytest
import torch

from medfed.common.compression import (
    FP16_MAX,
    DecodedUpdate,
    IncompatibleUpdate,
    check_form,
    encode_update,
)
from medfed.common.serde import encode, from_chunks, layout_from_proto, layout_to_proto

GLOBAL = {
    "conv.weight": torch.randn(16, 3, 3, 3, generator=torch.Generator().manual_seed(0)),
    "bn.running_var": torch.rand(16, generator=torch.Generator().manual_seed(1)) + 0.5,
    "bn.num_batches_tracked": torch.tensor(40),
    "fc.bias": torch.zeros(4),
}


def trained(scale: float = 0.05) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    out = {k: v + scale * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v + 3
           for k, v in GLOBAL.items()}  # fmt: skip
    out["fc.bias"] = GLOBAL["fc.bias"].clone()  # a tensor the round left unchanged
    return out


def round_trip(state: dict[str, torch.Tensor], encoding: str) -> tuple[dict[str, torch.Tensor], int]:
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

    assert all(torch.equal(decoded[k], state[k]) for k in state)


@pytest.mark.parametrize(("encoding", "relative"), [("fp16", 2**-11), ("bf16", 2**-8)])
def test_half_precision_stays_within_its_relative_bound(encoding: str, relative: float) -> None:
    state = trained()

    decoded, nbytes = round_trip(state, encoding)

    for name, value in state.items():
        error = (decoded[name].double() - value.double()).abs()
        bound = torch.clamp(value.double().abs() * relative, min=2**-25)
        assert bool((error <= bound).all()), name
    assert decoded["bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(decoded["bn.num_batches_tracked"], state["bn.num_batches_tracked"])
    assert nbytes < encode(state).layout.total_bytes * 0.6


def test_int8_deltas_stay_within_half_a_step_of_the_per_tensor_scale() -> None:
    state = trained()

    decoded, nbytes = round_trip(state, "int8")

    for name, value in state.items():
        if not value.is_floating_point():
            assert torch.equal(decoded[name], value)
            continue
        delta = value.double() - GLOBAL[name].double()
        step = delta.abs().max().item() / 127
        assert (decoded[name] - value.double()).abs().max().item() <= step / 2 + 1e-12, name
    assert torch.equal(decoded["fc.bias"].float(), GLOBAL["fc.bias"])  # unchanged stays exactly unchanged
    assert nbytes < encode(state).layout.total_bytes * 0.35


def test_fp16_sends_a_tensor_it_cannot_hold_losslessly() -> None:
    state = trained()
    state["bn.running_var"] = state["bn.running_var"] * (2 * FP16_MAX)

    encoded = encode_update(state, GLOBAL, "fp16")
    decoded, _ = round_trip(state, "fp16")

    dtypes = {t.name: t.dtype for t in encoded.layout.tensors}
    assert dtypes["bn.running_var"] == torch.float32 and dtypes["conv.weight"] == torch.float16
    assert torch.equal(decoded["bn.running_var"], state["bn.running_var"])


def test_a_round_refuses_forms_it_did_not_ask_for() -> None:
    model = encode(GLOBAL).layout
    as_fp16 = encode_update(trained(), GLOBAL, "fp16").layout
    as_int8 = encode_update(trained(), GLOBAL, "int8").layout
    lossless = encode(trained()).layout

    check_form(lossless, model, "int8")  # lossless is always allowed
    with pytest.raises(IncompatibleUpdate, match=r"arrived as torch\.float16"):
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
