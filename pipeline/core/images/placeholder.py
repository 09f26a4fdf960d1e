"""What Flickr's "photo unavailable" placeholder looks like, for the download stage (which sees the
redirect and the bytes) and the clean stage (which also compares pictures).

Flickr answers a deleted photo with a redirect to ``.../photo_unavailable.png`` (HTTP 200, an image), so
only these checks stop it from entering a dataset as if it were the photo.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

#: md5 (hex) of bodies known to be placeholders: Flickr's photo_unavailable.png (2,051 bytes, 500x374)
PLACEHOLDER_MD5S = frozenset({"880a7a58e05d3e83797f27573bb6d35c"})
#: image_phash (pipeline.core.images.imaging) of the placeholder drawn by pipeline.mirror.drawing.placeholder_png(),
#: a look-alike of Flickr's 500x374 grey photo_unavailable.png (camera icon, "This photo is no longer
#: available"). Made with: to_rgb(load_image(placeholder_png(), 10**8)) -> image_phash; tests/test_clean.py
#: recomputes it. With the real file at hand, recompute it the same way and add it here.
PLACEHOLDER_PHASHES = ("b3197339cce6ccc631cc664c666373339331999bccc6cccc664c671993339333",)
#: Flickr redirects a deleted photo to .../photo_unavailable.png (and variants such as _l.png)
_PLACEHOLDER_PATH = re.compile(r"/photo_unavailable[^/]*$")


def is_placeholder_url(url: str) -> bool:
    """Does ``url`` (where the redirects ended) name Flickr's "photo unavailable" picture?"""
    try:
        return bool(_PLACEHOLDER_PATH.search(urlsplit(url).path))
    except ValueError:
        return False
