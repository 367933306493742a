"""What messages, logs, responses and saved files may show of a place or a model string:
never a password, an API key or a URL's user part (``http://user:password@host``).

Model strings and store URIs keep their secrets in memory (they are needed to connect); only
what is shown or written down goes through here.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

# a URL inside a model string (``openai:http://u:p@h/v1#model``) runs to a '#' or a space
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s#]+")


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of ``error``'s message (its type's name when it has none), cut at
    ``limit`` characters: a native library's error as one line of a message of smysl's."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def split_user(url: str) -> tuple[str | None, str]:
    """(the user part of ``url`` or None, ``url`` without it). The user part runs to the last
    '@': a password with an unescaped '/', '?', '#' or '@' in it is still all of it (a parser
    would end it early and show the rest as the host)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return None, url
    user, _, rest = rest.rpartition("@")
    return user, f"{scheme}://{rest}"


def shown_url(url: str) -> str:
    """``url`` as it may be shown: scheme, host, port and path, without the user part or the
    query (``?api_key=``)."""
    without = split_user(url)[1]
    try:
        parts = urlsplit(without)
    except ValueError:  # not a URL urllib can read ("s3://[bucket"): as given, less its user
        return without
    # host and port as written (a name, or fingerprint, made of it stays what it was)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def shown_source(source: str) -> str:
    """A model string (what :func:`smysl.load` was given) with each URL in it shown by
    :func:`shown_url`: ``openai:http://u:p@h/v1#m`` -> ``openai:http://h/v1#m``."""
    return _URL.sub(lambda m: shown_url(m.group(0)), source)


def url_secrets(url: str) -> list[str]:
    """What a URL carries that must not be shown: its password, as written and decoded, the
    HTTP Basic credentials made of it, and the values of credential parameters of its query
    (``?api_key=``, Azure's ``sig`` and ``code``; names as :func:`header_secrets` reads
    them), as written, decoded and encoded."""
    try:
        query = urlsplit(url).query
    except ValueError:
        query = ""
    secrets: list[str] = []
    for piece in query.split("&"):  # credentials in the query, as written and as sent
        name, _, written = piece.partition("=")
        value = unquote_plus(written)
        if unquote_plus(name).strip().lower() in _QUERY_CREDENTIALS \
                or header_secrets([(unquote_plus(name), value)]):
            secrets += [written, value, quote(value, safe=""), quote_plus(value)]
    user, sep, written = (split_user(url)[0] or "").partition(":")
    if sep and written:
        password = unquote(written)
        basic = base64.b64encode(f"{unquote(user)}:{password}".encode()).decode()
        secrets += [written, password, basic]
    return [s for s in secrets if s]


#: Last words of header names whose values are credentials (``X-API-Key``, ``X-Auth-Token``,
#: ``Ocp-Apim-Subscription-Key``...; not ``X-Token-Limit``).
_CREDENTIAL_WORDS = {"auth", "authorization", "key", "apikey", "token", "secret", "cookie",
                     "signature", "password", "pass", "passphrase", "credential", "credentials",
                     "jwt", "bearer"}


#: Query parameter names that are credentials besides those :func:`header_secrets` takes: a
#: shared access signature's ``sig``, an Azure Functions key's ``code`` (whole names:
#: ``country_code`` is none).
_QUERY_CREDENTIALS = {"sig", "code"}


def header_secrets(headers: Iterable[tuple[str, str]]) -> list[str]:
    """The credentials among HTTP headers: the values of headers whose name ends in a
    credential word (or holds ``session``), and of an ``Authorization`` value (``Bearer
    sk-...``) the credential alone as well."""
    out: list[str] = []
    for name, value in headers:
        words = re.split(r"[-_\s]+", name.strip().lower())
        if words[-1] in _CREDENTIAL_WORDS or "session" in words or "cookie" in words:
            out.append(value)
            if words[-1] == "authorization":
                out.append(value.partition(" ")[2].strip())
    return [s for s in out if s]


def redacted(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret (4 characters or more) replaced by
    ``***`` (an upstream's error body that echoes the request's headers)."""
    # stripped too: an error may quote a value escaped ("b'sk-...\\n'"), which the raw
    # value with its line break does not match
    forms = {form for s in secrets for form in (s, s.strip())}
    for secret in sorted({s for s in forms if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def nan_as_null(value: object) -> object:
    """``value`` (JSON-like: dicts, lists, tuples) with NaN and infinities as None, for JSON
    that strict readers take (Python's ``json`` writes a bare ``NaN``; ``JSON.parse`` refuses
    it): the server's JSON fallback, the eval reports."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_as_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_as_null(v) for v in value]
    return value
