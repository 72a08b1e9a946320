"""Secure aggregation's messages: every value survives its round trip, and what cannot be a value is
refused at the edge with WireFormatError."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from medfed.client.secure_aggregation import HospitalRound
from medfed.common import pki
from medfed.common.errors import WireFormatError
from medfed.common.messages import TrainSettings
from medfed.common.secagg.messages import Parameters, Reveal, UnmaskRequest
from medfed.common.wire import secure
from medfed.common.wire.convert import settings_from_proto, settings_to_proto
from medfed.common.wire.proto import pb

PARAMETERS = Parameters((("hospital_a", 10), ("hospital_b", 20), ("hospital_c", 5)), 3, os.urandom(32), 0.25, 1000)


def test_a_secure_round_travels_in_the_task_settings() -> None:
    settings = TrainSettings(1, 1e-3, 8, 0, secure_aggregation=PARAMETERS)
    assert settings_from_proto(settings_to_proto(settings)) == settings
    assert settings_from_proto(settings_to_proto(TrainSettings(1, 1e-3, 8, 0))).secure_aggregation is None


@pytest.mark.parametrize(
    "change",
    [
        {"participants": [pb.Participant(name="b", num_examples=1), pb.Participant(name="a", num_examples=1)]},
        {"participants": [pb.Participant(name="bad name!", num_examples=1), pb.Participant(name="z", num_examples=1)]},
        {"participants": [pb.Participant(name="a", num_examples=0), pb.Participant(name="b", num_examples=1)]},
        {"threshold": 1},
        {"threshold": 9},
        {"clip": float("nan")},
        {"length": 0},
        {"graph_seed": b"short"},
    ],
)
def test_impossible_secure_settings_are_refused(change: dict) -> None:
    msg = secure.parameters_to_proto(PARAMETERS)
    for key, value in change.items():
        if key == "participants":
            del msg.participants[:]
            msg.participants.extend(value)
        else:
            setattr(msg, key, value)
    with pytest.raises(WireFormatError):
        secure.parameters_from_proto(msg)


def test_every_stage_message_survives_its_round_trip() -> None:
    ca_key, ca = pki.make_ca()
    setup = PARAMETERS.for_round("f00d", 2)
    nodes = {}
    for name in setup.names:
        key, cert = pki.issue(ca_key, ca, name)
        nodes[name] = HospitalRound(name, setup, ca=ca, signing_key=key, certificate=cert.public_bytes(Encoding.PEM))
    advertised = [nodes[n].advertise() for n in setup.names]
    assert secure.relayed_from_proto(secure.relayed_to_proto(advertised)) == advertised
    bundles = nodes["hospital_a"].share(advertised)
    assert secure.bundles_from_proto(secure.bundles_to_proto(bundles)) == bundles
    request = UnmaskRequest(("hospital_a", "hospital_b"), ("hospital_c",))
    assert secure.unmask_from_proto(secure.unmask_to_proto(request)) == request
    signatures = {"hospital_a": b"\x30" * 70}
    assert secure.confirmations_from_proto(secure.confirmations_to_proto(signatures)) == signatures
    reveal = Reveal("hospital_a", {"hospital_b": b"\x01" * 66}, {"hospital_c": b"\x02" * 66})
    assert secure.reveal_from_proto(secure.reveal_to_proto(reveal), "hospital_a") == reveal


def test_malformed_stage_messages_are_refused() -> None:
    with pytest.raises(WireFormatError, match="not X25519"):
        secure.keys_from_proto(
            pb.PublicKeys(hospital="a", cipher=b"x", mask=b"y" * 32, signature=b"s", certificate=b"c")
        )
    with pytest.raises(WireFormatError, match="not 160"):
        secure.bundles_from_proto(pb.ShareBundles(bundles=[pb.ShareBundle(sender="a", recipient="b", sealed=b"x")]))
    with pytest.raises(WireFormatError, match="twice"):
        secure.unmask_from_proto(pb.UnmaskRequest(survivors=["a", "a"]))
    with pytest.raises(WireFormatError, match="wrong size"):
        secure.reveal_from_proto(pb.Reveal(self_shares={"b": b"short"}), "a")
    with pytest.raises(WireFormatError, match="impossible size"):
        secure.confirmations_from_proto(pb.Confirmations(signatures={"a": b"x" * 1000}))
