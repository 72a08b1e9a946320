import math

import pytest
import torch

from medfed.common import serde
from medfed.common.serde import (
    CHUNK_SIZE,
    WireFormatError,
    WireTooLarge,
    from_chunks,
    layout_from_proto,
    layout_to_proto,
    to_chunks,
)
from medfed.proto.v1 import federation_pb2 as pb


def roundtrip(state: dict[str, torch.Tensor], chunk_size: int = CHUNK_SIZE) -> dict[str, torch.Tensor]:
    layout, chunks = to_chunks(state, chunk_size)
    header = layout_from_proto(layout_to_proto(layout), max_total_bytes=1 << 40)
    return from_chunks(header, chunks)


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        # Compare bit patterns so that NaNs and signed zeros count too.
        assert torch.equal(a[name].contiguous().reshape(-1).view(torch.uint8), b[name].reshape(-1).view(torch.uint8)), (
            name
        )


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.bool,
        torch.int32,
        torch.int8,
        torch.uint8,
    ],
)
def test_every_dtype_round_trips_bit_exactly(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        value = torch.rand(7, 5, generator=gen) > 0.5
    elif dtype.is_floating_point:
        value = (torch.randn(7, 5, generator=gen) * 1e3).to(dtype)
        value[0, 0], value[0, 1], value[0, 2] = float("nan"), float("-inf"), -0.0
    else:
        info = torch.iinfo(dtype)
        value = torch.randint(info.min, info.max, (7, 5), generator=gen, dtype=dtype)
    state = {"t": value, "tail": torch.ones(3, dtype=dtype)}

    result = roundtrip(state, chunk_size=16)

    assert_identical(state, result)


def test_zero_dim_empty_and_non_contiguous_tensors_round_trip() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "scalar": torch.tensor(3.25),
        "count": torch.tensor(7, dtype=torch.int64),
        "empty": torch.empty(0, 3),
        "transposed": base.t(),
        "strided": base[:, ::2],
        "flag": torch.tensor(True),
    }
    assert not state["transposed"].is_contiguous()

    result = roundtrip(state, chunk_size=7)

    assert_identical(state, result)
    assert result["scalar"].dim() == 0 and result["scalar"].item() == 3.25


def test_tensors_are_aligned_so_they_can_be_viewed_in_place() -> None:
    state = {
        "a": torch.ones(3, dtype=torch.uint8),
        "b": torch.ones(5, dtype=torch.float64),
        "c": torch.ones(1),
    }

    layout = serde.layout_of(state)

    assert all(spec.offset % serde.ALIGNMENT == 0 for spec in layout.tensors)


def test_a_300_megabyte_state_dict_streams_through_the_chunking_code() -> None:
    gen = torch.Generator().manual_seed(1)
    state = {f"layer{i}.weight": torch.randn(25_000_000 // 4 * 4, generator=gen).reshape(-1, 4) for i in range(3)}
    state["bn.num_batches_tracked"] = torch.tensor(11)
    total = sum(t.numel() * t.element_size() for t in state.values())
    assert total >= 300_000_000

    layout, chunks = to_chunks(state)
    sizes: list[int] = []

    def counted():
        for offset, data in chunks:
            sizes.append(len(data))
            yield offset, data

    result = from_chunks(layout_from_proto(layout_to_proto(layout), max_total_bytes=1 << 40), counted())

    assert max(sizes) <= CHUNK_SIZE
    assert len(sizes) == math.ceil(layout.total_bytes / CHUNK_SIZE)
    assert all(torch.equal(state[k], result[k]) for k in state)
    # a chunk wrapped in a message stays far below gRPC's 4 MiB default limit
    assert pb.TaskMessage(chunk=pb.Chunk(offset=1 << 40, data=bytes(CHUNK_SIZE))).ByteSize() < 4 * 1024 * 1024


def test_short_long_reordered_overlapping_and_gapped_streams_are_refused() -> None:
    layout, chunks = to_chunks({"w": torch.ones(100)}, chunk_size=100)
    a, b, c, d = list(chunks)

    with pytest.raises(WireFormatError, match="ended after 300 of 400"):
        from_chunks(layout, [a, b, c])
    with pytest.raises(WireTooLarge, match="longer than the 400 bytes"):
        from_chunks(layout, [a, b, c, d, (400, b"x")])
    with pytest.raises(WireFormatError, match="offset 200 leaves a gap"):
        from_chunks(layout, [a, c, b, d])
    with pytest.raises(WireFormatError, match="offset 50 overlaps"):
        from_chunks(layout, [a, (50, b[1])])
    assert torch.equal(from_chunks(layout, [a, b, c, d])["w"], torch.ones(100))


def _header(**tensor_fields: object) -> pb.ModelHeader:
    fields = {"name": "w", "dtype": pb.DTYPE_FLOAT32, "shape": [2, 2], "offset": 0, "nbytes": 16}
    fields.update(tensor_fields)
    return pb.ModelHeader(tensors=[pb.TensorSpec(**fields)], total_bytes=64)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dtype": 0}, "unknown dtype"),
        ({"shape": [-1, 2]}, "invalid shape"),
        ({"nbytes": 15}, "do not match"),
        ({"offset": 2}, "invalid offset"),
        ({"offset": 60}, "invalid offset"),
        ({"name": ""}, "empty or repeated"),
    ],
)
def test_malformed_headers_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(WireFormatError, match=message):
        layout_from_proto(_header(**fields), max_total_bytes=1 << 20)


def test_overlapping_and_oversized_headers_are_refused() -> None:
    overlapping = pb.ModelHeader(
        tensors=[
            pb.TensorSpec(name="a", dtype=pb.DTYPE_FLOAT32, shape=[4], offset=0, nbytes=16),
            pb.TensorSpec(name="b", dtype=pb.DTYPE_FLOAT32, shape=[4], offset=8, nbytes=16),
        ],
        total_bytes=64,
    )
    with pytest.raises(WireFormatError, match="overlap"):
        layout_from_proto(overlapping, max_total_bytes=1 << 20)
    with pytest.raises(WireTooLarge, match="exceeds the allowed"):
        layout_from_proto(_header(), max_total_bytes=32)
