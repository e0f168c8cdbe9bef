"""An image name in containerd, resolved to its target descriptor over containerd's gRPC API.

containerd keeps image names in its metadata database (bolt, ``meta.db``), which containerd holds
open and locked while it runs; its API is the one supported way to read them. That is one call,
``containerd.services.images.v1.Images/Get``, in the namespace given as the
``containerd-namespace`` gRPC metadata, as ctr sends it.

Why grpcio and a hand-written message codec: the ``containerd`` package on PyPI (generated
stubs) was last released in 2021 for containerd 1.5 and pins protobuf code that current protobuf
runtimes refuse, so it is not a well-kept client. grpcio is Google's own, maintained, with wheels
for every platform, and speaks HTTP/2 over a unix socket. The three messages read here (a name in;
an image whose target is a descriptor of media type, digest and size out) are a few varints and
strings in protobuf's wire format, decoded below rather than bringing the protobuf runtime and
generated code for them. grpcio is imported only when a ``containerd:`` name is pulled (it takes
about 0.25 s to import); it is the ``containerd`` extra (``pip install layerhoard[containerd]``).

Where containerd is: ``--containerd-address``, else CONTAINERD_ADDRESS, else
/run/containerd/containerd.sock, as ctr finds it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from cache.errors import ImageNotFound, InvalidDigest, SourceError
from cache.model.digest import parse_digest
from cache.model.manifests import Descriptor

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
GET_IMAGE = "/containerd.services.images.v1.Images/Get"
TIMEOUT = 30.0
MAX_ANSWER = 1 << 20  # an image record is a name, labels and a descriptor: far below this


def containerd_address(option: str | None = None) -> str:
    """The socket ctr would use: the option, else CONTAINERD_ADDRESS, else the default."""
    return option or os.environ.get("CONTAINERD_ADDRESS") or DEFAULT_ADDRESS


def resolve(address: str, namespace: str, name: str) -> Descriptor:
    """The descriptor the image ``name`` points at in ``namespace`` (an index or a manifest)."""
    try:
        import grpc
    except ImportError:
        raise SourceError("reading containerd's image names needs grpcio: "
                          "pip install 'layerhoard[containerd]'") from None
    target = address if address.startswith("unix:") else f"unix://{address}"
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_ANSWER)]) as channel:
        get = channel.unary_unary(GET_IMAGE)  # bytes in, bytes out: the codec is below
        try:
            answer = get(_string_field(1, name), metadata=(("containerd-namespace", namespace),), timeout=TIMEOUT)
        except grpc.RpcError as error:
            raise _error(error, address, namespace, name) from None
    return _target(answer, f"containerd's answer for {name!r}")


def _error(error: Any, address: str, namespace: str, name: str) -> SourceError | ImageNotFound:
    import grpc

    code, detail = error.code(), (error.details() or "").splitlines()[0][:200] if error.details() else ""
    if code == grpc.StatusCode.NOT_FOUND:
        return ImageNotFound(f"image {name!r} is not in containerd's namespace {namespace!r} at {address}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return SourceError(f"no containerd reachable at {address} ({detail or code.name}); "
                           "point at it with --containerd-address or CONTAINERD_ADDRESS")
    return SourceError(f"containerd at {address} refused to give image {name!r}: {code.name}: {detail}")


def _target(answer: bytes, what: str) -> Descriptor:
    """GetImageResponse.image (1) → Image.target (3) → Descriptor (media_type 1, digest 2, size 3)."""
    image = _only(answer, 1, what)
    target = _only(image, 3, what)
    fields = {number: value for number, value in _fields(target, what)}
    media_type, digest, size = fields.get(1), fields.get(2), fields.get(3)
    if not isinstance(media_type, bytes) or not isinstance(digest, bytes) or not isinstance(size, int):
        raise SourceError(f"{what} has no complete target descriptor")
    try:
        return Descriptor(media_type.decode(), parse_digest(digest.decode()), size)
    except (InvalidDigest, UnicodeDecodeError) as error:
        raise SourceError(f"{what} names a bad target: {error}") from None


def _only(message: bytes, number: int, what: str) -> bytes:
    for field, value in _fields(message, what):
        if field == number and isinstance(value, bytes):
            return value
    raise SourceError(f"{what} lacks field {number}")


def _string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, at: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    raise SourceError(f"{what} is not a protobuf message (a bad varint)")


def _fields(data: bytes, what: str) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as ints, length-delimited as bytes;
    fixed 32/64-bit fields are skipped (none is read here)."""
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at, what)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at, what)
            yield number, value
        elif wire == 2:
            length, at = _read_varint(data, at, what)
            if at + length > len(data):
                raise SourceError(f"{what} is not a protobuf message (a field runs past its end)")
            yield number, data[at : at + length]
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise SourceError(f"{what} is not a protobuf message (wire type {wire})")
