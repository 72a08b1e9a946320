"""Uploads received into files (server/spool.py): every tensor reads back as it was sent, a stream out of
order is refused with nothing left on disk, and closing deletes the file."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from medfed.common.errors import WireFormatError
from medfed.common.tensors import encode
from medfed.server.spool import spool

STATE = {
    "conv.weight": np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7),
    "half": np.linspace(-1, 1, 9).astype(ml_dtypes.bfloat16),
    "q": np.arange(-5, 6, dtype=np.int8),
    "count": np.array(42, dtype=np.int64),
    "mask": np.array([True, False, True]),
}


def test_every_tensor_reads_back_as_sent_and_closing_deletes_the_file(tmp_path: Path) -> None:
    encoded = encode(STATE)
    spooled = spool(encoded.layout, encoded.chunks(chunk_size=13), tmp_path)

    assert list(spooled) == list(STATE) and len(spooled) == len(STATE)
    for name, value in STATE.items():
        back = spooled[name]
        assert back.dtype == value.dtype and back.shape == value.shape and np.array_equal(back, value), name
    assert spooled.path.stat().st_size == encoded.layout.total_bytes
    spooled.close()
    spooled.close()  # idempotent
    assert list(tmp_path.iterdir()) == []


def test_a_stream_out_of_order_or_cut_short_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    encoded = encode(STATE)
    chunks = list(encoded.chunks(chunk_size=16))
    for broken in ([chunks[0], *chunks[2:]], chunks[:-1]):
        with pytest.raises(WireFormatError):
            spool(encoded.layout, iter(broken), tmp_path)
    assert list(tmp_path.iterdir()) == []
