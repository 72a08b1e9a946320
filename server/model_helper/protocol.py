"""How the coordinator and its PyTorch helper talk: one JSON line per message on a pipe; a message with
``model_bytes`` is followed by the model's tensor table (the wire format's ModelHeader, ``header_bytes``
long) and its raw byte stream, so a model crosses without pickle, without temporary files and without
an extra copy on either side.
"""

from __future__ import annotations

import json
from typing import IO, Any

from medfed.common.errors import WireFormatError
from medfed.common.limits import MAX_MODEL_BYTES
from medfed.common.tensors import EncodedModel
from medfed.common.wire.convert import layout_from_bytes, layout_to_bytes


def send(stream: IO[bytes], message: dict[str, Any], model: EncodedModel | None = None) -> None:
    header = layout_to_bytes(model.layout) if model is not None else b""
    if model is not None:
        message = {**message, "header_bytes": len(header), "model_bytes": len(model.buffer)}
    stream.write(json.dumps(message).encode() + b"\n")
    if model is not None:
        stream.write(header)
        stream.write(model.buffer)
    stream.flush()


def receive(stream: IO[bytes]) -> tuple[dict[str, Any], EncodedModel | None] | None:
    """The next message, None at the end of the stream."""
    line = stream.readline()
    if not line:
        return None
    message: dict[str, Any] = json.loads(line)
    if "model_bytes" not in message:
        return message, None
    layout = layout_from_bytes(_read_exactly(stream, int(message["header_bytes"])), max_total_bytes=MAX_MODEL_BYTES)
    if layout.total_bytes != message["model_bytes"]:
        raise WireFormatError(f"model of {message['model_bytes']} bytes, its header says {layout.total_bytes}")
    buffer = bytearray(layout.total_bytes)
    view, done = memoryview(buffer), 0
    while done < len(buffer):
        got = stream.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise EOFError(f"the stream ended after {done} of {len(buffer)} model bytes")
        done += got
    return message, EncodedModel(layout, buffer)


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError(f"the stream ended after {len(data)} of {size} bytes")
    return data
