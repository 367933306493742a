"""``smysl serve``: arguments become one ServerConfig; it reports what it loaded and where."""

from __future__ import annotations

from typing import Any

import pytest

import smysl.server
from smysl.cli import build_parser, main
from smysl.server import ServerConfig


def test_serve_builds_config_and_reports(tiny_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, Any] = {}

    def fake_serve(embedder: Any, config: ServerConfig) -> None:  # stands in for uvicorn.run
        seen["embedder"], seen["config"] = embedder, config
        seen["alive"] = embedder.engine.alive  # while serving

    monkeypatch.setattr(smysl.server, "serve", fake_serve)
    monkeypatch.setenv("SMYSL_API_KEY", "from-env")
    rc = main(["serve", "--model", str(tiny_dir), "--port", "0", "--device", "cpu",
               "--served-name", "qwen3-embedding:0.6b", "--dimensions", "32", "--max-queue",
               "7", "--max-request-mb", "2", "--threads", "1"])
    assert rc == 0
    cfg = seen["config"]
    assert (cfg.api_key, cfg.served_name, cfg.default_dimensions, cfg.max_queue) == (
        "from-env", "qwen3-embedding:0.6b", 32, 7)
    assert cfg.max_request_bytes == 2 * 1024 * 1024 and cfg.host == "127.0.0.1"
    assert seen["embedder"].dimensions == 64
    engine = seen["embedder"].engine  # a local model's engine runs in a child process
    assert engine.threads == 1 and seen["alive"]
    err = capsys.readouterr().err
    assert f"engine in child process {engine.pid}" in err
    assert not engine.alive  # serve() returned: the command closed the model
    assert "listening on http://127.0.0.1:0" in err and "API key required" in err
    assert str(tiny_dir) in err and "64 dims" in err


def test_serve_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        ServerConfig(max_queue=0)
    with pytest.raises(ValueError, match="api_key"):
        ServerConfig(api_key="")
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.port == 8000 and args.host == "127.0.0.1"


def test_serve_in_process_keeps_the_engine_here(tiny_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from smysl.qwen3.engine import Engine

    seen: dict[str, Any] = {}
    monkeypatch.setattr(smysl.server, "serve", lambda embedder, config: seen.update(e=embedder))
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--in-process"]) == 0
    assert isinstance(seen["e"].engine, Engine)
    assert "child process" not in capsys.readouterr().err
