"""What messages, logs, responses and saved files may show of a place or a model string:
never a password, an API key or a URL's user part (``http://user:password@host``).

Model strings and store URIs keep their secrets in memory (they are needed to connect); only
what is shown or written down goes through here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

# a URL inside a model string (``openai:http://u:p@h/v1#model``) runs to a '#' or a space
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s#]+")


def shown_url(url: str) -> str:
    """``url`` as it may be shown: scheme, host, port and path, without the user part or the
    query (``?api_key=``)."""
    parts = urlsplit(url)
    # host and port as written (a name, or fingerprint, made of it stays what it was)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def shown_source(source: str) -> str:
    """A model string (what :func:`smysl.load` was given) with each URL in it shown by
    :func:`shown_url`: ``openai:http://u:p@h/v1#m`` -> ``openai:http://h/v1#m``."""
    return _URL.sub(lambda m: shown_url(m.group(0)), source)


def url_secrets(url: str) -> list[str]:
    """What a URL carries that must not be shown: its password, as written and decoded, and
    the HTTP Basic credentials made of it."""
    parts = urlsplit(url)
    if parts.password is None:
        return []
    user, password = unquote(parts.username or ""), unquote(parts.password)
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [s for s in (parts.password, password, basic) if s]


#: Header names whose values are credentials (``Authorization``, ``X-API-Key``, a cookie...).
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|signature|password", re.IGNORECASE)


def header_secrets(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The credentials among HTTP headers: the values of headers named like one, and of an
    ``Authorization``-style value (``Bearer sk-...``) the credential alone as well."""
    out: list[str] = []
    for name, value in headers:
        if _SECRET_HEADER.search(name):
            out += [value, value.partition(" ")[2].strip()]
    return [s for s in out if s]


def redacted(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (4 characters or more) replaced by
    ``***`` (an upstream's error body that echoes the request's headers)."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
