import math

import numpy as np
import pytest

from medfed.common import tensors as serde
from medfed.common.errors import WireFormatError, WireTooLarge
from medfed.common.limits import CHUNK_SIZE
from medfed.common.tensors import BFLOAT16, StateDict, from_chunks, is_float, to_chunks
from medfed.common.wire.convert import layout_from_proto, layout_to_proto
from medfed.proto.v1 import federation_pb2 as pb


def roundtrip(state: StateDict, chunk_size: int = CHUNK_SIZE) -> StateDict:
    layout, chunks = to_chunks(state, chunk_size)
    header = layout_from_proto(layout_to_proto(layout), max_total_bytes=1 << 40)
    return from_chunks(header, chunks)


def assert_identical(a: StateDict, b: StateDict) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        # Compare bit patterns so that NaNs and signed zeros count too.
        assert np.ascontiguousarray(a[name]).tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize(
    "dtype",
    [np.float32, np.float16, BFLOAT16, np.float64, np.int64, np.bool_, np.int32, np.int8, np.uint8],
)
def test_every_dtype_round_trips_bit_exactly(dtype: type) -> None:
    rng = np.random.default_rng(0)
    if np.dtype(dtype) == np.bool_:
        value = rng.random((7, 5)) > 0.5
    elif is_float(np.dtype(dtype)):
        value = (rng.standard_normal((7, 5)) * 1e3).astype(dtype)
        value[0, 0], value[0, 1], value[0, 2] = float("nan"), float("-inf"), -0.0
    else:
        info = np.iinfo(dtype)
        value = rng.integers(info.min, info.max, (7, 5), dtype=dtype)
    state = {"t": value, "tail": np.ones(3, dtype=dtype)}

    result = roundtrip(state, chunk_size=16)

    assert_identical(state, result)


def test_zero_dim_empty_and_non_contiguous_tensors_round_trip() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    state = {
        "scalar": np.array(3.25, dtype=np.float32),
        "count": np.array(7, dtype=np.int64),
        "empty": np.empty((0, 3), dtype=np.float32),
        "transposed": base.T,
        "strided": base[:, ::2],
        "flag": np.array(True),
    }
    assert not state["transposed"].flags.c_contiguous

    result = roundtrip(state, chunk_size=7)

    assert_identical(state, result)
    assert result["scalar"].ndim == 0 and result["scalar"].item() == 3.25


def test_tensors_are_aligned_so_they_can_be_viewed_in_place() -> None:
    state = {
        "a": np.ones(3, dtype=np.uint8),
        "b": np.ones(5, dtype=np.float64),
        "c": np.ones(1, dtype=np.float32),
    }

    layout = serde.layout_of(state)

    assert all(spec.offset % serde.ALIGNMENT == 0 for spec in layout.tensors)


def test_a_300_megabyte_state_dict_streams_through_the_chunking_code() -> None:
    rng = np.random.default_rng(1)
    state = {
        f"layer{i}.weight": rng.standard_normal(25_000_000 // 4 * 4, dtype=np.float32).reshape(-1, 4) for i in range(3)
    }
    state["bn.num_batches_tracked"] = np.array(11, dtype=np.int64)
    total = sum(t.nbytes for t in state.values())
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
    assert all(np.array_equal(state[k], result[k]) for k in state)
    # a chunk wrapped in a message stays far below gRPC's 4 MiB default limit
    assert pb.TaskMessage(chunk=pb.Chunk(offset=1 << 40, data=bytes(CHUNK_SIZE))).ByteSize() < 4 * 1024 * 1024


def test_short_long_reordered_overlapping_and_gapped_streams_are_refused() -> None:
    layout, chunks = to_chunks({"w": np.ones(100, dtype=np.float32)}, chunk_size=100)
    a, b, c, d = list(chunks)

    with pytest.raises(WireFormatError, match="ended after 300 of 400"):
        from_chunks(layout, [a, b, c])
    with pytest.raises(WireTooLarge, match="longer than the 400 bytes"):
        from_chunks(layout, [a, b, c, d, (400, b"x")])
    with pytest.raises(WireFormatError, match="offset 200 leaves a gap"):
        from_chunks(layout, [a, c, b, d])
    with pytest.raises(WireFormatError, match="offset 50 overlaps"):
        from_chunks(layout, [a, (50, b[1])])
    assert np.array_equal(from_chunks(layout, [a, b, c, d])["w"], np.ones(100))


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
