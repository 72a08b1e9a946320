"""Random bytes and random chunk sequences thrown at the decoding layer: it accepts well-formed input
and refuses everything else with our own error types, never anything else."""

import contextlib
import itertools
import math

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medfed.common.errors import WireFormatError
from medfed.common.tensors import Chunk, encode, from_chunks
from medfed.common.wire.convert import info_from_proto, layout_from_proto, metrics_from_proto
from medfed.proto.v1 import federation_pb2 as pb

MODEL = {
    "w": np.arange(24, dtype=np.float32).reshape(4, 6),
    "n": np.array(5, dtype=np.int64),
    "m": np.ones(3, dtype=np.bool_),
}
ENCODED = encode(MODEL)
TOTAL = ENCODED.layout.total_bytes
LIMIT = 1 << 20

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
dims = st.lists(st.one_of(st.integers(-2, 9), int64), max_size=4)
offsets, sizes = st.one_of(st.integers(-64, 512), int64), st.one_of(st.integers(-8, 512), int64)
specs = st.builds(pb.TensorSpec, name=text, dtype=st.integers(0, 12), shape=dims, offset=offsets, nbytes=sizes)
headers = st.builds(
    pb.ModelHeader, tensors=st.lists(specs, max_size=5), total_bytes=st.one_of(st.integers(-8, 4096), int64)
)
WIRE_DTYPES = {pb.DTYPE_FLOAT32: 4, pb.DTYPE_FLOAT16: 2, pb.DTYPE_FLOAT64: 8, pb.DTYPE_INT64: 8, pb.DTYPE_BOOL: 1}


@st.composite
def plausible_headers(draw: st.DrawFn) -> pb.ModelHeader:
    """Consistent tables with random gaps (which may misalign a tensor) and the odd field nudged."""
    tensors, offset = [], 0
    for i in range(draw(st.integers(0, 5))):
        dtype = draw(st.sampled_from(sorted(WIRE_DTYPES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        offset += draw(st.sampled_from([0, 0, 1, 3, 8]))
        nbytes = math.prod(shape) * WIRE_DTYPES[dtype] + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
        tensors.append(pb.TensorSpec(name=f"t{i}", dtype=dtype, shape=shape, offset=offset, nbytes=nbytes))
        offset += max(nbytes, 0) - draw(st.sampled_from([0, 0, 1, 2]))
    return pb.ModelHeader(tensors=tensors, total_bytes=offset + draw(st.integers(-2, 16)))


chunks = st.lists(st.tuples(st.one_of(st.integers(-4, TOTAL + 8), int64), st.binary(max_size=TOTAL + 16)), max_size=8)
QUICK = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(st.one_of(headers, plausible_headers()))
def test_any_header_is_accepted_consistently_or_refused_with_our_error(header: pb.ModelHeader) -> None:
    try:
        layout = layout_from_proto(header, max_total_bytes=LIMIT)
    except WireFormatError:
        return
    assert 0 <= layout.total_bytes <= LIMIT
    for spec in layout.tensors:
        assert spec.offset >= 0 and spec.offset + spec.nbytes <= layout.total_bytes
        assert spec.nbytes == math.prod(spec.shape) * spec.dtype.itemsize
    used = sorted((s.offset, s.offset + s.nbytes) for s in layout.tensors if s.nbytes)
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(used))
    decoded = from_chunks(layout, [(0, bytes(layout.total_bytes))])  # an accepted header really decodes
    assert all(tuple(decoded[s.name].shape) == s.shape for s in layout.tensors)


@QUICK
@given(st.binary(max_size=600))
def test_random_bytes_never_get_past_the_header_checks(data: bytes) -> None:
    try:
        header = pb.ModelHeader.FromString(data)
    except DecodeError:
        return  # protobuf refuses it before our code runs (gRPC then answers INTERNAL)
    with contextlib.suppress(WireFormatError):  # anything else escapes and fails the test
        layout_from_proto(header, max_total_bytes=LIMIT)


@QUICK
@given(chunks)
def test_any_chunk_sequence_reassembles_exactly_or_is_refused_with_our_error(sequence: list[Chunk]) -> None:
    try:
        state = from_chunks(ENCODED.layout, sequence)
    except WireFormatError:
        return
    # Accepted only if the pieces tile [0, TOTAL) in order; then every tensor is exactly what the bytes say.
    position = 0
    for offset, data in sequence:
        assert offset == position
        position += len(data)
    assert position == TOTAL
    assert set(state) == set(MODEL) and all(state[k].shape == MODEL[k].shape for k in MODEL)


@QUICK
@given(st.integers(1, TOTAL), st.data())
def test_the_real_stream_cut_anywhere_reassembles_bit_exactly(size: int, data: st.DataObject) -> None:
    pieces = list(ENCODED.chunks(size))
    cut = data.draw(st.integers(0, len(pieces)))

    try:
        state = from_chunks(ENCODED.layout, pieces[:cut])
    except WireFormatError:
        assert cut < len(pieces)
        return
    assert cut == len(pieces) and all(np.array_equal(state[k], MODEL[k]) for k in MODEL)


@QUICK
@given(st.builds(pb.DatasetInfo, dataset=text, task=text, channels=int32, class_names=st.lists(text, max_size=6),
                 image_size=st.lists(int32, max_size=3)))  # fmt: skip
def test_any_dataset_description_is_validated_or_refused_with_our_error(message: pb.DatasetInfo) -> None:
    try:
        info = info_from_proto(message)
    except WireFormatError:
        return
    assert 1 <= info.channels <= 16 and len(info.image_size) == 2 and len(info.class_names) >= 2


@QUICK
@given(st.dictionaries(text, st.floats(allow_nan=True, allow_infinity=True), max_size=70))
def test_any_metrics_are_kept_finite_or_refused_with_our_error(metrics: dict[str, float]) -> None:
    try:
        kept = metrics_from_proto(metrics)
    except WireFormatError:
        return
    assert kept == metrics and all(math.isfinite(v) for v in kept.values())
