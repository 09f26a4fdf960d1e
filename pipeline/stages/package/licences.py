"""What the photos' licences are, how many photos each covers, and what each asks of whoever reuses them.

Open Images says its photos are CC BY 2.0, but the image table's ``License`` column is the truth per
photo, and it also holds CC BY-SA 2.0 (and, in other versions, other Creative Commons URLs). The package
lists every licence found, from that column, so a user knows the duties before reusing the data.
The URL comes from downloaded metadata: only Creative Commons URLs are named; anything else is shown as
"other" with its (credential-free, shortened) text, never trusted as a link.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.core.base.redact import public_url

_CC_LICENSE = re.compile(r"^https?://(?:www\.)?creativecommons\.org/licenses/(?P<code>[a-z]+(?:-[a-z]+){0,3})/"
                         r"(?P<version>\d\.\d)/?$")
_CC_PUBLIC = re.compile(r"^https?://(?:www\.)?creativecommons\.org/publicdomain/(?P<kind>zero|mark)/(?P<version>\d\.\d)/?$")
#: what each element of a Creative Commons licence code requires, in the words a reuser needs
_TERMS = {
    "by": "attribution: credit the author (ATTRIBUTION.csv), link the licence, say if you changed it",
    "sa": "share-alike: adaptations must be shared under the same licence",
    "nc": "non-commercial: no commercial use",
    "nd": "no derivatives: share only unchanged copies (no crops or edits)",
}
_MAX_SHOWN = 200


@dataclass(frozen=True)
class Licence:
    name: str                 # e.g. "CC BY-SA 2.0"
    url: str                  # the column's value (cleaned)
    requires: tuple[str, ...]  # one line per duty


def describe(url: str) -> Licence:
    """The licence behind one ``License`` value."""
    text = url.strip()
    if match := _CC_LICENSE.match(text):
        parts = match["code"].split("-")
        if set(parts) <= set(_TERMS):
            name = f"CC {match['code'].upper()} {match['version']}"
            return Licence(name, text, tuple(_TERMS[part] for part in parts))
    if match := _CC_PUBLIC.match(text):
        name = "CC0 1.0" if match["kind"] == "zero" else f"Public Domain Mark {match['version']}"
        return Licence(name, text, ("none (public domain); crediting the author is still good practice",))
    shown = public_url(text)[:_MAX_SHOWN] or "(none given)"
    return Licence(f"other: {shown}", shown, ("unknown: read the licence of each photo before reuse",))


def licence_counts(urls: Iterable[str]) -> list[dict]:
    """``[{name, url, photos, requires}]``, one per licence, most photos first (then by name). Each distinct
    URL is described once: a handful of licences for 100k photos."""
    counts: Counter[Licence] = Counter()
    for url, photos in Counter(urls).items():
        counts[describe(url)] += photos
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0].name))
    return [{"name": lic.name, "url": lic.url, "photos": n, "requires": list(lic.requires)} for lic, n in ordered]
