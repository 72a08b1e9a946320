"""A model on a stream, both directions: one header (the task's or the update's, with the tensor table),
then the model's bytes in chunks. The coordinator sends tasks and reads updates with these functions,
the hospital reads tasks and sends updates with them, so the framing is written once.

Chunks must arrive in order, each starting where the previous one ended (common/tensors.py checks
that); a second header, or anything but chunks after the first, is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from medfed.common.errors import WireFormatError, WireTooLarge
from medfed.common.limits import MAX_MODEL_BYTES, MAX_SIGNATURE
from medfed.common.messages import FinishedNotice, ReceivedTask, TaskHeader, UpdateHeader
from medfed.common.provenance.digests import UpdateDigest
from medfed.common.tensors import Chunk, EncodedModel, Layout, StateDict, from_chunks
from medfed.common.wire.convert import (
    layout_from_proto,
    layout_to_proto,
    metrics_from_proto,
    model_spec_from_proto,
    model_spec_to_proto,
    report_from_proto,
    report_to_proto,
    settings_from_proto,
    settings_to_proto,
)
from medfed.common.wire.proto import pb


def _chunks(
    messages: Iterable[pb.TaskMessage] | Iterable[pb.UpdateMessage],
    after: str,
    progress: Callable[[], None] | None = None,
    digest: UpdateDigest | None = None,
) -> Iterator[Chunk]:
    for message in messages:
        if message.WhichOneof("kind") != "chunk":
            raise WireFormatError(f"expected only chunks after the {after} header")
        if progress is not None:
            progress()
        if digest is not None:  # a chunk out of place fails the whole read (from_chunks), digest and all
            digest.update(message.chunk.data)
        yield message.chunk.offset, message.chunk.data


# ----- tasks: coordinator -> hospital ----------------------------------------------------------------


def task_messages(header: TaskHeader, model: EncodedModel) -> Iterator[pb.TaskMessage]:
    yield pb.TaskMessage(
        task=pb.TaskHeader(
            round=header.round,
            total_rounds=header.total_rounds,
            config=settings_to_proto(header.settings),
            model=model_spec_to_proto(header.model),
            tensors=layout_to_proto(model.layout),
        )
    )
    for offset, data in model.chunks():
        yield pb.TaskMessage(chunk=pb.Chunk(offset=offset, data=data))


def finished_message(notice: FinishedNotice) -> pb.TaskMessage:
    return pb.TaskMessage(
        finished=pb.Finished(reason=notice.reason, rounds_completed=notice.rounds_completed, resumable=notice.resumable)
    )


def wait_message(reason: str) -> pb.TaskMessage:
    return pb.TaskMessage(wait=pb.Wait(reason=reason))


def read_task(messages: Iterable[pb.TaskMessage]) -> ReceivedTask | FinishedNotice | None:
    """A task with its model, the end of the federation, or None (nothing to do yet: poll again)."""
    stream = iter(messages)
    first = next(stream, None)
    kind = first.WhichOneof("kind") if first is not None else None
    if first is None or kind == "wait":
        return None
    if kind == "finished":
        f = first.finished
        return FinishedNotice(f.reason, f.rounds_completed, f.resumable)
    if kind != "task":
        raise WireFormatError(f"unexpected {kind} message at the start of a task")
    task = first.task
    layout = layout_from_proto(task.tensors, max_total_bytes=MAX_MODEL_BYTES)
    state = from_chunks(layout, _chunks(stream, "task"))
    header = TaskHeader(
        task.round, task.total_rounds, settings_from_proto(task.config), model_spec_from_proto(task.model)
    )
    return ReceivedTask(header, state)


# ----- updates: hospital -> coordinator --------------------------------------------------------------


def update_header_message(header: UpdateHeader, layout: Layout) -> pb.UpdateMessage:
    """An upload's first message: the hospital sends it, then waits to be admitted before the chunks."""
    message = pb.UpdateHeader(
        session_id=header.session_id,
        round=header.round,
        num_examples=header.num_examples,
        metrics=header.metrics,
        kind=pb.UPDATE_KIND_DELTA if header.delta else pb.UPDATE_KIND_WEIGHTS,
        tensors=layout_to_proto(layout),
        signature=header.signature,
    )
    if header.privacy is not None:
        message.privacy.CopyFrom(report_to_proto(header.privacy))
    return pb.UpdateMessage(header=message)


def update_chunk_messages(model: EncodedModel) -> Iterator[pb.UpdateMessage]:
    for offset, data in model.chunks():
        yield pb.UpdateMessage(chunk=pb.Chunk(offset=offset, data=data))


def update_messages(header: UpdateHeader, model: EncodedModel) -> Iterator[pb.UpdateMessage]:
    """A whole upload at once, header and chunks, without waiting to be admitted (tests play hospitals
    that do not wait with this)."""
    yield update_header_message(header, model.layout)
    yield from update_chunk_messages(model)


def read_update_header(messages: Iterator[pb.UpdateMessage]) -> UpdateHeader:
    """The first message of an update, checked completely (before a byte of the model is read)."""
    first = next(messages, None)
    if first is None or first.WhichOneof("kind") != "header":
        raise WireFormatError("an update must start with its header")
    header = first.header
    if header.kind not in (pb.UPDATE_KIND_UNSPECIFIED, pb.UPDATE_KIND_WEIGHTS, pb.UPDATE_KIND_DELTA):
        raise WireFormatError(f"unknown update kind {header.kind}")
    if len(header.signature) > MAX_SIGNATURE:
        raise WireTooLarge(f"the update's signature is {len(header.signature)} bytes; the limit is {MAX_SIGNATURE}")
    return UpdateHeader(
        session_id=header.session_id,
        round=header.round,
        num_examples=header.num_examples,
        metrics=metrics_from_proto(header.metrics),
        layout=layout_from_proto(header.tensors, max_total_bytes=MAX_MODEL_BYTES),
        privacy=report_from_proto(header.privacy) if header.HasField("privacy") else None,
        delta=header.kind == pb.UPDATE_KIND_DELTA,
        signature=header.signature,
    )


def update_chunks(
    messages: Iterable[pb.UpdateMessage], progress: Callable[[], None] | None = None,
    digest: UpdateDigest | None = None,
) -> Iterator[Chunk]:  # fmt: skip
    """The rest of an update, after its header: its chunks (into ``digest`` as they arrive), for the
    receiver to put in memory or in a file (common/tensors.in_order checks their order)."""
    return _chunks(messages, "update", progress, digest)


def read_update_model(
    header: UpdateHeader, messages: Iterable[pb.UpdateMessage], progress: Callable[[], None] | None = None,
    digest: UpdateDigest | None = None,
) -> StateDict:  # fmt: skip
    """The rest of an update, into one buffer laid out as the header said."""
    return from_chunks(header.layout, update_chunks(messages, progress, digest))
