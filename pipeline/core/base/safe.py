"""Guards for values that come from the internet or from a user: file names, IDs, URLs and secrets.

Open Images metadata is downloaded, so nothing in it may choose a path on disk or a URL scheme.
Credentials in URLs and error text are blanked by :mod:`pipeline.core.base.redact`.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from pipeline.core.base.errors import UserError
from pipeline.core.base.redact import public_url

#: Open Images ImageIDs: 16 lower-case hex digits (also used by pyarrow, whose regexes are RE2)
IMAGE_ID_PATTERN = r"^[0-9a-f]{16}$"
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
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
    """Only plain http(s) URLs with a host (and, if given, a valid port) are ever fetched."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def check_http_url(url: str) -> str:
    """``url`` when :func:`is_http_url`, else ``ValueError`` (for params validation)."""
    if not is_http_url(url):
        raise ValueError(f"must be an http(s) URL with a host and a valid port, got {public_url(url)!r}")
    return url


def require_http_url(url: str, what: str = "URL") -> str:
    if not is_http_url(url):
        raise UserError(f"{what} must be an http(s) URL, got {public_url(url)!r}")
    return url


def printable(text: str) -> str:
    """A file name as text that can be written anywhere: bytes that were not UTF-8 become ``\\udcXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
