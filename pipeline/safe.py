"""Guards for values that come from the internet: file names, IDs and URLs.

Open Images metadata is downloaded, so nothing in it may choose a path on disk or a URL scheme.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from pipeline.errors import UserError

_IMAGE_ID = re.compile(r"^[0-9a-f]{16}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def is_image_id(value: object) -> bool:
    """Open Images ImageIDs are 16 lower-case hex digits."""
    return isinstance(value, str) and bool(_IMAGE_ID.match(value))


def label_dirname(label: str) -> str:
    """A folder name for a label that is safe on Linux, macOS and Windows.

    ``"Submarine sandwich"`` -> ``"Submarine_sandwich"``; ``"Hot dog/Frank"`` -> ``"Hot_dog_Frank"``.
    """
    text = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("_", text).replace(" ", "_").strip("._ ")
    text = re.sub(r"_+", "_", text)[:100]
    if not text or text.upper() in _WINDOWS_RESERVED:
        text = f"label_{text or 'unnamed'}"
    return text


def is_http_url(url: object) -> bool:
    """Only plain http(s) URLs with a host are ever fetched."""
    if not isinstance(url, str):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def require_http_url(url: str, what: str = "URL") -> str:
    if not is_http_url(url):
        raise UserError(f"{what} must be an http(s) URL, got {url!r}")
    return url


def join_inside(base: Path, relative: object) -> Path | None:
    """``base / relative`` when ``relative`` is a plain relative path that stays inside ``base``, else None.

    Manifests carry file paths relative to a stage's folder; a doctored manifest must not make a later
    stage read, link or show a file elsewhere on the machine (``../../etc/passwd``, ``/home/...``).
    """
    if not isinstance(relative, str) or not relative:
        return None
    rel = PurePosixPath(relative.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or PureWindowsPath(relative).drive:
        return None
    return Path(base, *rel.parts)
