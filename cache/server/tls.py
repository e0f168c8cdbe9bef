"""HTTPS for ``serve``: the server's SSLContext (the listener, listener.py, does the handshakes).

    context = server_context("server.crt", "server.key", client_ca="clients-ca.crt")

TLS 1.2 and 1.3 only; for TLS 1.2 only forward-secret AEAD suites (ECDHE/DHE with AES-GCM or
ChaCha20), which every client serve is meant for (docker, containerd, podman, skopeo: Go's TLS;
Python's ssl) offers. With a client CA, a client certificate signed by it is required (mutual TLS).

Costs: one handshake per connection (clients keep connections alive, so one per pull or so), done
without blocking by the listener under the header timeout, so a client that connects and says
nothing holds up no one else. Trusted: the files the operator names; nothing the client sends
before its certificate checks out.
"""

from __future__ import annotations

import ssl

from cache.errors import LayerhoardError

# TLS 1.2's suites; TLS 1.3 has only good ones and OpenSSL's default list for it is kept
_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context from PEM files; any problem with them is a one-line LayerhoardError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    _readable("--tls-cert", cert)
    _readable("--tls-key", key)
    try:
        context.load_cert_chain(cert, key)
    except OSError as error:
        raise LayerhoardError(f"cannot use --tls-cert {cert} with --tls-key {key}: {_reason(error)}") from None
    if client_ca is not None:
        _readable("--tls-client-ca", client_ca)
        try:
            context.load_verify_locations(cafile=client_ca)
        except OSError as error:
            raise LayerhoardError(f"cannot use --tls-client-ca {client_ca}: {_reason(error)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _readable(option: str, path: str) -> None:
    """Name the file that is missing or unreadable (OpenSSL's own error does not say which)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise LayerhoardError(f"cannot read {option} {path}: {error.strerror or error}") from None


def _reason(error: OSError) -> str:
    """OpenSSL's reason ("KEY_VALUES_MISMATCH", "NO_START_LINE") or the OS's, without the noise."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return {"NO_START_LINE": "not a PEM file", "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
                }.get(error.reason, error.reason.lower().replace("_", " "))
    return error.strerror or str(error)
