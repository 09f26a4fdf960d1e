"""Credentials never leave the process: a URL a user typed may carry a password (``http://user:pass@host/``)
or a token in its query, and neither may reach a log line, a manifest, an error message or a published
package. Imports nothing of the project, so :mod:`.errors` can scrub every line it prints."""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: query parameters that carry a credential (S3 presigned URLs, OAuth, API keys)
_SECRET_QUERY = re.compile(r"(?i)^(x-amz-(signature|credential|security-token)|signature|sig|token|access_token|"
                           r"api[_-]?key|key|password|passwd|secret|auth)$")


def public_url(url: object) -> str:
    """``url`` with any ``user:password@`` and any credential in its query replaced by ``***``.

    Every URL that is printed, logged, recorded in a manifest or published goes through this; the request
    itself keeps what it needs. Text that does not parse as a URL is returned with anything before an ``@``
    in its authority blanked, so even a malformed URL cannot leak a password.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return re.sub(r"(//)[^/@]*@", r"\1***@", text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_QUERY.match(key) for key, _ in pairs):
            query = urlencode([(key, "***" if _SECRET_QUERY.match(key) else value) for key, value in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_CREDENTIALS_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"]*@")
_TOKENS_IN_TEXT = re.compile(r"(?i)([?&](?:x-amz-(?:signature|credential|security-token)|signature|sig|token|"
                             r"access_token|api[_-]?key|key|password|passwd|secret|auth)=)[^&\s'\"]+")


def scrub(text: str) -> str:
    """Free text (an error message, a reason from a library) with any URL credential blanked out: the
    ``user:password@`` of a URL and the values of credential query parameters become ``***``."""
    return _TOKENS_IN_TEXT.sub(r"\1***", _CREDENTIALS_IN_TEXT.sub(r"\1***@", text))
