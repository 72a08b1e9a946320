import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from medfed.common import pki
from medfed.common.errors import PkiError
from medfed.common.pki import check_pair
from medfed.tools.certs import main as fed_certs


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    pki_dir = tmp_path / "pki"
    assert fed_certs(["init", "--dir", str(pki_dir)]) == 0
    assert fed_certs(["server", "--dir", str(pki_dir), "--host", "coord.example.org,10.0.0.5"]) == 0
    assert fed_certs(["client", "--dir", str(pki_dir), "--name", "hospital_a"]) == 0
    return pki_dir


def test_fed_certs_makes_a_ca_a_server_and_a_hospital_with_modern_keys(folder: Path) -> None:
    ca = pki.load_cert(folder / "ca.crt")
    server = check_pair(folder / "server.crt", folder / "server.key", folder / "ca.crt", server=True)
    hospital = check_pair(folder / "hospital_a.crt", folder / "hospital_a.key", folder / "ca.crt", server=False)

    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert pki.common_name(hospital) == "hospital_a"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    lifetime = hospital.not_valid_after_utc - hospital.not_valid_before_utc
    assert dt.timedelta(days=390) < lifetime < dt.timedelta(days=400)


def test_private_keys_are_owner_only(folder: Path) -> None:
    for key in folder.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_existing_keys_are_not_overwritten_without_force(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (folder / "hospital_a.key").read_bytes()

    code = fed_certs(["client", "--dir", str(folder), "--name", "hospital_a"])

    assert code == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert (folder / "hospital_a.key").read_bytes() == before
    assert fed_certs(["client", "--dir", str(folder), "--name", "hospital_a", "--force"]) == 0
    assert (folder / "hospital_a.key").read_bytes() != before


def test_revoke_adds_the_serial_to_a_crl_signed_by_the_ca(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serial = pki.load_cert(folder / "hospital_a.crt").serial_number

    assert fed_certs(["revoke", "--dir", str(folder), "--name", "hospital_a"]) == 0
    assert fed_certs(["revoke", "--dir", str(folder), "--name", "hospital_a"]) == 0
    assert fed_certs(["list", "--dir", str(folder)]) == 0

    crl = pki.load_crl(folder / "crl.pem")
    assert pki.signed_by(crl, pki.load_cert(folder / "ca.crt"))
    assert pki.Revocations.from_crl(crl).serials == {serial}
    out = capsys.readouterr().out
    assert "already revoked" in out
    assert any(line.startswith("hospital_a.crt") and " revoked " in line for line in out.splitlines())
    assert any(line.startswith("server.crt") and " valid " in line for line in out.splitlines())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["client", "--name", "../evil"], "--name '../evil'"),
        (["client", "--name", "server"], "--name 'server'"),
        (["client", "--name", "hospital_b", "--days", "4000"], "would outlive the CA"),
        (["server", "--host", " , "], "--host needs at least one"),
        (["revoke", "--name", "nobody"], "nobody.crt does not exist"),
    ],
)
def test_bad_requests_are_refused_in_one_line(
    folder: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = fed_certs([args[0], "--dir", str(folder), *args[1:]])

    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_commands_before_init_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fed_certs(["client", "--dir", str(tmp_path), "--name", "hospital_a"]) == 2
    assert "run 'fed-certs init" in capsys.readouterr().err


def test_local_checks_name_what_is_wrong(folder: Path, tmp_path: Path) -> None:
    ca_key, ca = pki.load_key(folder / "ca.key"), pki.load_cert(folder / "ca.crt")
    old_key, old = pki.issue(ca_key, ca, "hospital_old", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=800))
    pki.write_private_key(tmp_path / "old.key", old_key)
    pki.write_public(tmp_path / "old.crt", old)

    with pytest.raises(PkiError, match="expired on"):
        check_pair(tmp_path / "old.crt", tmp_path / "old.key", folder / "ca.crt", server=False)
    with pytest.raises(PkiError, match="is not the private key of"):
        check_pair(folder / "hospital_a.crt", folder / "server.key", folder / "ca.crt", server=False)
    with pytest.raises(PkiError, match="is not a server certificate"):
        check_pair(folder / "hospital_a.crt", folder / "hospital_a.key", folder / "ca.crt", server=True)
    other = tmp_path / "other"
    fed_certs(["init", "--dir", str(other)])
    with pytest.raises(PkiError, match="was not issued by the CA in"):
        check_pair(folder / "hospital_a.crt", folder / "hospital_a.key", other / "ca.crt", server=False)
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(PkiError, match="is not a PEM certificate"):
        pki.load_cert(tmp_path / "junk.crt")
