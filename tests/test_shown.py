"""What may be shown of a place or a model string (smysl/shown.py): never a password."""

from __future__ import annotations

import base64

import pytest

from smysl.shown import (
    first_line,
    header_secrets,
    redacted,
    shown_source,
    shown_url,
    url_secrets,
)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://h:8080/v1", "http://h:8080/v1"),
    ("https://user:pa%40ss@api.example/v1?api_key=k3y", "https://api.example/v1"),
    ("http://u:p@[::1]:6333/", "http://[::1]:6333/"),
    ("http://h:port/x", "http://h:port/x"),
    ("http://MyHost:8080", "http://MyHost:8080"),  # as written: a TEI model's name is made of it
    ("http://u:s3/cr?e#t@h:6333/v1", "http://h:6333/v1"),  # a password a parser would end early
    ("s3://u:s3cret@[bucket/kb", "s3://[bucket/kb"),  # no URL to urllib: as given, less its user
])
def test_a_url_is_shown_without_its_user_part_or_query(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_a_model_string_is_shown_without_the_passwords_of_its_urls() -> None:
    assert shown_source("openai:http://u:s3cret@h:1/v1#text-embedding-3") == \
        "openai:http://h:1/v1#text-embedding-3"
    assert shown_source("tei:https://u:s3cret@tei.example") == "tei:https://tei.example"
    assert shown_source("Qwen/Qwen3-Embedding-0.6B") == "Qwen/Qwen3-Embedding-0.6B"
    assert shown_source("/models/qwen3 0.6b") == "/models/qwen3 0.6b"


def test_secrets_of_a_url_are_redacted_as_written_decoded_and_as_basic_auth() -> None:
    secrets = url_secrets("http://user:p%40ssw0rd@h/")
    basic = base64.b64encode(b"user:p@ssw0rd").decode()
    assert set(secrets) == {"p%40ssw0rd", "p@ssw0rd", basic}
    echoed = f'{{"authorization": "Basic {basic}", "url": "http://user:p%40ssw0rd@h/"}}'
    assert "ssw0rd" not in redacted(echoed, secrets) and basic not in redacted(echoed, secrets)
    assert url_secrets("http://h/") == [] and url_secrets("http://user@h/") == []
    assert "s3/cr?e#t" in url_secrets("http://u:s3/cr?e#t@h:6333/v1")
    assert redacted("a key abc", ["abc", ""]) == "a key abc"  # under 4 characters: kept
    # credentials in the query too (as written and decoded); other parameters are no secret
    query = url_secrets("https://h/v1?api-version=2024-02-01&api_key=sk-a%2Bb&n=x")
    assert set(query) == {"sk-a+b", "sk-a%2Bb"}
    # as written, decoded, and as httpx sends it; Azure's sig and code are keys too
    query = url_secrets("https://h/f?code=Az1&api_key=ab+c/d%3D&sv=2024&sig=S%2Fig")
    assert {"Az1", "ab+c/d%3D", "ab c/d=", "ab+c%2Fd%3D", "S%2Fig", "S/ig"} <= set(query)
    assert "2024" not in query
    assert url_secrets("https://h/v1?country_code=auto&code_version=2024") == []  # whole names


def test_only_credential_headers_are_secrets_and_a_bearer_key_alone_is_one_too() -> None:
    """Redacting every header value turned "application/json" and an app's name into ***;
    a key echoed without its "Bearer " was missed."""
    secrets = header_secrets([("Authorization", "Bearer sk-live-SECRET"), ("X-Title", "smysl"),
                              ("Accept", "application/json"), ("X-API-Key", "k3y value"),
                              ("X-Token-Limit", "1000"), ("X-Session-Id", "sess-1"),
                              ("Ocp-Apim-Subscription-Key", "azure-k3y")])
    assert set(secrets) == {"Bearer sk-live-SECRET", "sk-live-SECRET", "k3y value", "sess-1",
                            "azure-k3y"}
    assert redacted("Incorrect API key provided: sk-live-SECRET; expected application/json",
                    secrets) == "Incorrect API key provided: ***; expected application/json"


def test_a_native_error_is_shown_as_its_first_line_or_its_type() -> None:
    assert first_line(RuntimeError("\n  boom at x\n  backtrace: ...\n")) == "boom at x"
    assert first_line(OSError()) == "OSError"
    assert first_line(ValueError("y" * 500)) == "y" * 300
    assert first_line(ValueError("y" * 500), 10) == "y" * 10
