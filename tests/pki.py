"""Certificates for the TLS tests, made with the `cryptography` package: a CA and a server
certificate for every address the tests listen on, and a second CA with a client certificate for
mutual TLS. EC P-256 keys: fast to make, and every client here (Go's TLS, OpenSSL) takes them.

Files are laid out the way the clients read them: ``ca.crt`` is what docker's certs.d, skopeo's and
podman's --cert-dir and containerd's hosts.toml take; ``client.cert``/``client.key`` is the pair
containers/image picks up from a cert dir.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pki:
    ca: Path  # the server's CA
    server_cert: Path
    server_key: Path
    client_ca: Path  # the CA --tls-client-ca names
    client_cert: Path
    client_key: Path


_FILES = ("ca.crt", "server.crt", "server.key", "client-ca.crt", "client.cert", "client.key")  # Pki's order


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          extensions: list[tuple[x509.ExtensionType, bool]]) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _ca(subject: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    return _cert(subject, key, None, [(x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)]), key


def _leaf(subject: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], usage: x509.ObjectIdentifier,
          names: list[x509.GeneralName]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    extensions: list[tuple[x509.ExtensionType, bool]] = [(x509.BasicConstraints(ca=False, path_length=None), True),
                                                         (x509.ExtendedKeyUsage([usage]), False)]
    if names:
        extensions.append((x509.SubjectAlternativeName(names), False))
    return _cert(subject, key, (ca[0].subject, ca[1]), extensions), key


def make_pki(folder: Path, addresses: list[str]) -> Pki:
    """A server certificate valid for ``addresses`` (IPs) and localhost, and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(*(folder / name for name in _FILES))
    server_ca, client_ca = _ca("layerhoard test CA"), _ca("layerhoard test client CA")
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    server = _leaf("layerhoard serve", server_ca, ExtendedKeyUsageOID.SERVER_AUTH, names)
    client = _leaf("layerhoard client", client_ca, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pem = serialization.Encoding.PEM
    pki.ca.write_bytes(server_ca[0].public_bytes(pem))
    pki.client_ca.write_bytes(client_ca[0].public_bytes(pem))
    pki.server_cert.write_bytes(server[0].public_bytes(pem))
    pki.server_key.write_bytes(_key_pem(server[1]))
    pki.client_cert.write_bytes(client[0].public_bytes(pem))
    pki.client_key.write_bytes(_key_pem(client[1]))
    return pki
