"""What makes an update acceptable: its header before a byte is read, its values once it arrived.

The form (tensor names, shapes, dtypes, the encoding the round asked for, the size, the sample count)
is checked from the header (``check_header``) before a byte is read. Its values can only be checked
once it has arrived, and they must be, because an accepted update is folded into the round's sums at
once and cannot be taken out: one bad update would make the whole average unusable. An update is
refused when

- a floating-point value is NaN or infinite, as sent;
- an int8 delta, rebuilt as global + q x scale, leaves the finite range of the model's dtype (a
  finite but huge scale such as 1e37 passes the first rule and overflows float32 to infinity);
- a BatchNorm running variance (a tensor named ``*running_var``) is negative: normalising then takes
  the square root of a negative number, NaN for every input (a sign-flipped model does this);
- BatchNorm's batch counter (a tensor named ``*num_batches_tracked``) is negative.

Under TLS an update must also carry its hospital's signature over its digest, made with the key of the
certificate that delivered it (``check_signature``): the audit chain credits it to that hospital, and
nobody else can produce it (server/audit_log.py).

Each property survives FedAvg's weighted mean (a mean of finite values lies between them; a mean of
non-negative values is non-negative), so the average of acceptable updates has them too. A global
model that is unusable anyway (non-finite after a strategy's own arithmetic, or failing evaluation) is
never adopted: see ``server/driver.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medfed.common.compression import DecodedUpdate, IncompatibleUpdate, check_form
from medfed.common.limits import Encoding
from medfed.common.peer_text import quoted
from medfed.common.provenance.signing import update_signed
from medfed.common.secagg.vector import MASKED
from medfed.common.tensors import ALIGNMENT, Layout, is_float
from medfed.server.errors import InvalidUpdate, TooLarge
from medfed.server.rounds import UpdateProof


def check_header(
    name: str, layout: Layout, expected: Layout, encoding: Encoding, *, delta: bool, num_examples: int, joined_with: int
) -> None:
    """Refuse an upload from its header: the tensors the round's model and encoding need, no more bytes
    than those, and no more examples than the hospital joined with."""
    try:
        check_form(layout, expected, encoding, delta=delta)
    except IncompatibleUpdate as exc:
        raise InvalidUpdate(str(exc)) from None
    if layout.total_bytes > expected.total_bytes + ALIGNMENT * len(expected.tensors):
        raise TooLarge(f"an update of {layout.total_bytes} bytes is larger than the model needs")
    if not 1 <= num_examples <= joined_with:
        raise InvalidUpdate(f"num_examples {num_examples} is outside 1..{joined_with} (the count {name} joined with)")


def check_signature(name: str, proof: UpdateProof) -> None:
    """Refuse an update delivered over TLS that is not signed by the key of the certificate that sent it."""
    if proof.certificate is None:
        return  # an --insecure coordinator: no certificate to check a signature against
    if not proof.signature:
        raise InvalidUpdate(
            f"{name}'s update is not signed: under TLS every update carries its hospital's signature over its "
            "digest (update fed-client)"
        )
    if proof.digest is None or not update_signed(proof.certificate, proof.signature, proof.digest):
        raise InvalidUpdate(f"{name}'s update signature does not verify with the key of the certificate that sent it")


def check_secure_header(
    name: str, layout: Layout, length: int, num_examples: int, joined_with: int, *, delta: bool
) -> None:
    """A securely aggregated update: one int32 tensor of the round's vector length, and exactly the count
    the hospital joined with (its weight is already inside the masked values)."""
    expected = (MASKED, np.dtype(np.int32), (length,))
    if delta or [(spec.name, spec.dtype, spec.shape) for spec in layout.tensors] != [expected]:
        raise InvalidUpdate(f"a securely aggregated update is one int32 tensor {MASKED!r} of {length} values")
    if num_examples != joined_with:
        raise InvalidUpdate(f"num_examples {num_examples} differs from the {joined_with} {name} joined with, which "
                            "set its weight in this secure round")  # fmt: skip


VARIANCE_SUFFIX = "running_var"
COUNTER_SUFFIX = "num_batches_tracked"


def float_range(dtype: np.dtype) -> float:
    """The largest finite magnitude of a floating-point dtype (bfloat16 included)."""
    return float(np.finfo(dtype).max)


def refusal(sent: Mapping[str, np.ndarray], values: DecodedUpdate, model: Mapping[str, np.ndarray]) -> str | None:
    """Why an update cannot be accepted, or None. ``sent``: the tensors as they arrived; ``values``:
    their full values (int8 deltas rebuilt when read); ``model``: the round's global model (for the
    dtypes). An int8 delta is rebuilt here only when a cheap bound (max|g| + 127 s) says it might leave
    its range, and for the BatchNorm statistics checked: folding rebuilds each tensor once anyway."""
    for name, value in sent.items():
        if is_float(value.dtype) and not np.isfinite(value).all():
            return f"tensor {quoted(name)} holds NaN or infinite values"
    for name, target in model.items():
        if is_float(target.dtype):
            if values.is_delta(name) and values.magnitude_bound(name) > float_range(target.dtype):
                full = values[name]
                if full.size and float(np.abs(full).max()) > float_range(target.dtype):
                    return (f"tensor {quoted(name)} leaves the range of {target.dtype} once rebuilt "
                            "(an int8 delta's scale)")  # fmt: skip
            if name.endswith(VARIANCE_SUFFIX) and (full := values[name]).size and float(full.min()) < 0:
                return f"tensor {quoted(name)} holds negative variances (BatchNorm's running_var must be >= 0)"
        elif name.endswith(COUNTER_SUFFIX) and (full := values[name]).size and full.min() < 0:
            return f"tensor {quoted(name)} is a negative count (BatchNorm's num_batches_tracked must be >= 0)"
    return None


def first_unusable(state: Mapping[str, np.ndarray]) -> str | None:
    """The first tensor of an aggregated model that holds a NaN or an infinity, or None."""
    return next((name for name, v in state.items() if is_float(v.dtype) and not np.isfinite(v).all()), None)
