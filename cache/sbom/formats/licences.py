"""Licence names as found (``GPL-2+``, ``MIT License``) mapped onto SPDX identifiers where certain.

Only exact, unambiguous spellings are mapped; anything else stays as found and becomes an SPDX
``LicenseRef-`` (with its text) or a CycloneDX licence ``name``, never a guessed identifier.
"""

from __future__ import annotations

_KNOWN = [
    "0BSD", "AGPL-3.0-only", "AGPL-3.0-or-later", "Apache-2.0", "Artistic-1.0", "Artistic-2.0", "BSD-1-Clause",
    "BSD-2-Clause", "BSD-3-Clause", "BSL-1.0", "CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "EPL-1.0", "EPL-2.0",
    "GPL-1.0-only", "GPL-1.0-or-later", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only", "GPL-3.0-or-later",
    "ISC", "LGPL-2.0-only", "LGPL-2.0-or-later", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only",
    "LGPL-3.0-or-later", "MIT", "MIT-0", "MPL-1.1", "MPL-2.0", "OpenSSL", "PSF-2.0", "Python-2.0", "Unlicense",
    "Zlib", "X11", "curl", "BlueOak-1.0.0", "CDDL-1.0", "Ruby", "PostgreSQL", "WTFPL", "Beerware",
]
_ALIASES = {
    "MIT License": "MIT", "Apache Software License": "Apache-2.0", "Apache 2.0": "Apache-2.0",
    "Apache License 2.0": "Apache-2.0", "Apache License, Version 2.0": "Apache-2.0", "BSD License": "",
    "ISC License (ISCL)": "ISC", "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "GPL-2": "GPL-2.0-only", "GPL-2+": "GPL-2.0-or-later", "GPL-3": "GPL-3.0-only", "GPL-3+": "GPL-3.0-or-later",
    "LGPL-2.1": "LGPL-2.1-only", "LGPL-2.1+": "LGPL-2.1-or-later", "LGPL-2": "LGPL-2.0-only",
    "LGPL-2+": "LGPL-2.0-or-later", "LGPL-3": "LGPL-3.0-only", "LGPL-3+": "LGPL-3.0-or-later",
    "Expat": "MIT", "Artistic": "Artistic-1.0", "public-domain": "", "Python Software Foundation License": "PSF-2.0",
}
_BY_LOWER = {name.lower(): name for name in _KNOWN}


def spdx_id(found: str) -> str | None:
    """The SPDX identifier ``found`` certainly means, else None."""
    text = found.strip()
    if text in _ALIASES:
        return _ALIASES[text] or None
    return _BY_LOWER.get(text.lower())
