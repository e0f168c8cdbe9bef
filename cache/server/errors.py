"""The distribution spec's errors: one code, one HTTP status, and a JSON body clients understand."""

from __future__ import annotations

import json
from typing import Any

STATUS = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "TAG_INVALID": 400,
    "UNSUPPORTED": 405,
    "RANGE_INVALID": 416,
    "DENIED": 403,
    "TOOMANYREQUESTS": 429,  # the cap on open upload sessions
    "UNAVAILABLE": 502,  # an upstream failed; clients with several mirrors move on to the next
    "UNKNOWN": 500,
}


class RegistryError(Exception):
    """An error answered to the client as ``{"errors": [{"code", "message", "detail"}]}``."""

    def __init__(self, code: str, message: str, detail: Any = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail
        self.status = status or STATUS[code]

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()


DISK_FULL_STATUS = 507  # Insufficient Storage (RFC 4918): the client's request was fine, our disk is not


def disk_full_error() -> RegistryError:
    return RegistryError("UNKNOWN", "the cache's disk is full; nothing was stored: retry once space is freed",
                         status=DISK_FULL_STATUS)
