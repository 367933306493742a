"""``smysl serve``: arguments become one ServerConfig; it reports what it loaded and where."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

import smysl.server
from smysl.cli import build_parser, main
from smysl.procname import ENGINE
from smysl.server import ServerConfig


def test_serve_builds_config_and_reports(tiny_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, Any] = {}

    def fake_serve(embedder: Any, config: ServerConfig, *, ready: Any) -> int:  # uvicorn.run
        seen["embedder"], seen["config"] = embedder, config
        seen["alive"] = embedder.engine.alive  # while serving
        ready("127.0.0.1", 43210)  # the port is bound
        return 0

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
    assert cfg.access_log  # on unless --no-access-log
    assert cfg.workers == 1  # --workers auto on CPU: the cores are the engine's
    assert seen["embedder"].dimensions == 64
    engine = seen["embedder"].engine  # a local model's engine runs in a child process
    assert engine.threads == 1 and seen["alive"]
    err = capsys.readouterr().err
    assert f"engine in child process {engine.pid}" in err
    assert not engine.alive  # serve() returned: the command closed the model
    assert "listening on http://127.0.0.1:43210" in err and "API key required" in err
    assert str(tiny_dir) in err and "64 dims" in err
    # how the engine computes, and that no `smysl tune` measurement applies (a review's: the
    # engine logs it at INFO, which serve does not show)
    assert "cpu, float32" in err and ", 1 thread," in err
    assert "(default: smysl tune measures them)" in err


def test_serve_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        ServerConfig(max_queue=0)
    with pytest.raises(ValueError, match="api_key"):
        ServerConfig(api_key="")
    args = build_parser().parse_args(["serve", "--model", "m"])
    cfg = ServerConfig.from_env(host=args.host, port=args.port)  # none given, none in the env
    assert cfg.port == 8000 and cfg.host == "127.0.0.1"
    # TEI's and vLLM's spelling of --served-name (it was "unrecognized arguments")
    args = build_parser().parse_args(["serve", "--model", "m", "--served-model-name", "x"])
    assert args.served_name == "x"


def test_the_key_from_a_file_and_the_allowed_hosts(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A key on the command line is every local user's to read (/proc/PID/cmdline):
    --api-key-file reads it from a file; --allowed-host names the Host values served."""
    from smysl.commands.serve import _server_config

    monkeypatch.delenv("SMYSL_API_KEY", raising=False)
    key = tmp_path / "key"
    key.write_text("s3cret\n", encoding="utf-8")
    args = build_parser().parse_args(["serve", "--model", "m", "--api-key-file", str(key),
                                      "--allowed-host", "embed.example",
                                      "--allowed-host", "localhost"])
    cfg = _server_config(args, "m", {})
    assert cfg.api_key == "s3cret" and cfg.allowed_hosts == ("embed.example", "localhost")
    assert _server_config(build_parser().parse_args(["serve", "--model", "m"]), "m",
                          {}).allowed_hosts is None  # serve() decides by the bind address
    both = build_parser().parse_args(["serve", "--model", "m", "--api-key-file", str(key),
                                      "--api-key", "x"])
    with pytest.raises(ValueError, match="use one"):
        _server_config(both, "m", {})
    key.write_text("\ufeffs3cret\r\n", encoding="utf-8")  # a Windows editor's BOM: no part
    assert _server_config(args, "m", {}).api_key == "s3cret"
    key.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="first line is empty"):
        _server_config(args, "m", {})
    missing = build_parser().parse_args(["serve", "--model", "m", "--api-key-file",
                                         str(tmp_path / "nope")])
    with pytest.raises(FileNotFoundError, match="--api-key-file"):
        _server_config(missing, "m", {})
    folder = build_parser().parse_args(["serve", "--model", "m", "--api-key-file",
                                        str(tmp_path)])
    with pytest.raises(IsADirectoryError, match=f"^--api-key-file {tmp_path}: Is a directory"):
        _server_config(folder, "m", {})


def test_serve_in_process_keeps_the_engine_here(tiny_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from smysl.qwen3.engine import Engine

    seen: dict[str, Any] = {}
    monkeypatch.setattr(smysl.server, "serve",
                        lambda embedder, config, ready: seen.update(e=embedder))
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--in-process"]) == 0
    assert isinstance(seen["e"].engine, Engine)
    assert "child process" not in capsys.readouterr().err


def test_serve_keeps_the_engine_here_where_it_cannot_run_in_a_child(  # type: ignore[no-untyped-def]
        tiny_dir, monkeypatch, capsys) -> None:
    """Windows (no ``select()`` on pipes): ``smysl serve`` crashed the child and served
    "backend down"; the engine now runs in the server process there, and asking for a child
    in code is a clear error."""
    from smysl import options as options_mod
    from smysl.commands import serve as serve_cmd
    from smysl.qwen3.engine import Engine

    monkeypatch.setattr(serve_cmd, "ENGINE_PROCESSES", False)
    monkeypatch.setattr(options_mod, "ENGINE_PROCESSES", False)
    seen: dict[str, Any] = {}
    monkeypatch.setattr(smysl.server, "serve",
                        lambda embedder, config, ready: seen.update(e=embedder))
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu"]) == 0
    assert isinstance(seen["e"].engine, Engine)
    with pytest.raises(ValueError, match="needs Linux or macOS"):
        options_mod.ModelOptions(process=True)
    assert main(["serve", "--model", str(tiny_dir / "none"), "--workers", "2"]) == 2
    assert "engine processes need Linux or macOS" in capsys.readouterr().err


def test_serve_reads_model_host_and_port_from_env(tiny_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``SMYSL_MODEL``, ``SMYSL_HOST``, ``SMYSL_PORT`` as TEI's and Ollama's variables; flags
    win; "listening" is printed only when the server reports the bound port (issue 11 item 11:
    it used to be printed before the port was bound)."""
    seen: list[ServerConfig] = []

    def fake_serve(embedder: Any, config: ServerConfig, *, ready: Any) -> int:
        seen.append(config)
        assert "listening" not in capsys.readouterr().err  # not before the port is bound
        return 3  # e.g. the backend stayed down

    monkeypatch.setattr(smysl.server, "serve", fake_serve)
    monkeypatch.setenv("SMYSL_MODEL", str(tiny_dir))
    monkeypatch.setenv("SMYSL_HOST", "0.0.0.0")
    monkeypatch.setenv("SMYSL_PORT", "9123")
    assert main(["serve", "--device", "cpu", "--in-process"]) == 3  # the exit code passes on
    assert (seen[0].host, seen[0].port) == ("0.0.0.0", 9123)
    assert main(["serve", "--device", "cpu", "--in-process", "--port", "9000",
                 "--host", "127.0.0.2"]) == 3
    assert (seen[1].host, seen[1].port) == ("127.0.0.2", 9000)
    monkeypatch.setenv("SMYSL_PORT", "eighty")
    assert main(["serve", "--device", "cpu", "--in-process"]) == 2
    assert "SMYSL_PORT" in capsys.readouterr().err
    monkeypatch.delenv("SMYSL_MODEL")
    monkeypatch.delenv("SMYSL_PORT")
    assert main(["serve"]) == 2
    assert "SMYSL_MODEL" in capsys.readouterr().err


def test_an_api_key_of_spaces_is_refused_not_read_as_none(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A review's: $SMYSL_API_KEY holding only spaces was stripped to nothing and read as
    unset: a server its operator meant to lock, open to anyone. A key with spaces around it
    is still taken without them; an empty variable is unset."""
    monkeypatch.setenv("SMYSL_API_KEY", "   ")
    with pytest.raises(ValueError, match="SMYSL_API_KEY holds only spaces"):
        ServerConfig.from_env()
    monkeypatch.setenv("SMYSL_API_KEY", " sekret\n")
    assert ServerConfig.from_env().api_key == "sekret"
    monkeypatch.setenv("SMYSL_API_KEY", "")
    assert ServerConfig.from_env().api_key is None
    # a review's: "clé" matched curl's UTF-8 bytes and never a browser's Latin-1 ones
    for key in ("clé", "ключ", "tab\tkey"):
        with pytest.raises(ValueError, match="printable ASCII"):
            ServerConfig(api_key=key)
    assert ServerConfig(api_key="a-b_c.d~!").api_key == "a-b_c.d~!"


def test_unhealthy_exit_defaults_to_each_backend_s_kind() -> None:
    """A local engine that stays down makes `serve` exit (a supervisor restarts it); an upstream
    API that does not answer does not: a restart cannot bring it back, /health shows it. Each
    backend by its own kind, in the server (the CLI and Python alike); a number or 0 given
    applies to all."""
    from smysl.commands.serve import unhealthy_exit_s
    from smysl.server.config import InvalidServerSettings, ServerConfig
    from smysl.server.health import LOCAL_EXIT_S, exit_after

    assert unhealthy_exit_s(None) == "auto" == ServerConfig().unhealthy_exit_s
    assert unhealthy_exit_s(30.0) == 30.0 and unhealthy_exit_s(0.0) is None
    assert exit_after("auto", remote=False) == LOCAL_EXIT_S == 60.0
    assert exit_after("auto", remote=True) is None
    assert exit_after(30.0, remote=True) == 30.0 and exit_after(None, remote=False) is None
    for bad in ("soon", 0, -1.0, True):
        with pytest.raises(InvalidServerSettings, match="unhealthy_exit_s"):
            ServerConfig(unhealthy_exit_s=bad)  # type: ignore[arg-type]


def test_worker_stall_flag(tiny_dir, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--worker-stall-s``: seconds, 0 = never watch; a negative one is refused by its flag's
    name; with one worker it does nothing, and says so."""
    from smysl.server.config import InvalidServerSettings

    seen: list[ServerConfig] = []
    monkeypatch.setattr(smysl.server, "serve",
                        lambda embedder, config, ready: seen.append(config) or 0)
    base = ["serve", "--model", str(tiny_dir), "--device", "cpu", "--in-process"]
    assert main(base) == 0 and seen[-1].worker_stall_s == ServerConfig().worker_stall_s == 30
    assert "not used with one HTTP worker" not in capsys.readouterr().err
    assert main([*base, "--worker-stall-s", "5"]) == 0 and seen[-1].worker_stall_s == 5
    assert "--worker-stall-s is not used with one HTTP worker" in capsys.readouterr().err
    assert main([*base, "--worker-stall-s", "0"]) == 0 and seen[-1].worker_stall_s is None
    assert "not used with one HTTP worker" not in capsys.readouterr().err  # "never": no-op
    assert main([*base, "--worker-stall-s", "-1"]) == 2
    assert "--worker-stall-s" in capsys.readouterr().err
    for bad in (0, 0.05, -2.0, True, "30"):
        with pytest.raises(InvalidServerSettings, match="worker_stall_s"):
            ServerConfig(worker_stall_s=bad)


def test_workers_auto_on_cuda_runs_half_the_cpus(tiny_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``--workers auto`` (the default) asks the loaded model where it computes: a model whose
    engine process says CUDA gets HTTP workers for half the CPUs; in process, one."""
    import dataclasses
    import os
    from pathlib import Path

    import smysl.cpus
    from smysl import Embedder

    real = Embedder.info
    monkeypatch.setattr(Embedder, "info", lambda self: dataclasses.replace(real(self),
                                                                             device="cuda:0"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.setattr(smysl.cpus, "CGROUP_ROOT", Path("/nonexistent"))  # no quota
    seen: list[int] = []
    monkeypatch.setattr(smysl.server, "serve",
                        lambda embedder, config, ready: seen.append(config.workers))
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--threads", "1"]) == 0
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--threads", "1",
                 "--workers", "3"]) == 0
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--in-process"]) == 0
    assert seen == [6, 3, 1]


def test_auto_workers_rule() -> None:
    from smysl.server.workers import MAX_AUTO_WORKERS, auto_workers

    assert auto_workers([("cuda", 101)], cpus=16) == MAX_AUTO_WORKERS == 8
    assert auto_workers([("cuda:1", 101), ("cpu", 102)], cpus=64) == 8
    assert auto_workers([("cuda", 101)], cpus=4) == 2
    assert auto_workers([("cuda", 101)], cpus=1) == 1
    assert auto_workers([("cpu", 101)], cpus=16) == 1  # the cores are the engine's
    assert auto_workers([("cuda", None)], cpus=16) == 1  # in process: nothing to share
    assert auto_workers([("cuda", 101), (None, None)], cpus=16) == 1  # a remote reranker
    assert auto_workers([], cpus=16) == 1


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_workers_flag_takes_a_count_or_auto(value: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert build_parser().parse_args(["serve", "--workers", "auto"]).workers == "auto"
    assert build_parser().parse_args(["serve", "--workers", "4"]).workers == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", value])
    assert "count >= 1 or auto" in capsys.readouterr().err


@pytest.mark.parametrize("reranker", ["cohere:rerank-v3.5", "jina:jina-reranker-v2-base"])
def test_workers_refuse_a_remote_reranker_before_loading(reranker: str, tiny_dir,  # type: ignore[no-untyped-def]
                                                         capsys) -> None:
    """cohere: and jina: are reranker schemes only: read from the embedding table they were
    taken as local, and the server loaded both models before share() failed."""
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--workers", "2",
                 "--reranker", reranker]) == 2
    err = capsys.readouterr().err
    assert "is a remote API: serve it with one worker" in err and "loaded" not in err


def test_a_port_in_use_is_refused_before_loading(tiny_dir, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A review's: a port already taken was said only after the model had loaded (the whole
    load of an 8B wasted)."""
    import socket

    from server_helpers import REAL_CLAIM_PORT

    monkeypatch.setattr(smysl.server.workers, "claim_port", REAL_CLAIM_PORT)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--port",
                     str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "loaded" not in err, err


def test_bad_settings_are_named_by_their_flags_and_ranges(capsys) -> None:  # type: ignore[no-untyped-def]
    """The message named Python fields ("max_request_bytes", "switch_interval_s") that no
    flag is called, without the range; it is checked before any model loads."""
    assert main(["serve", "--model", "/no/such/model", "--max-request-mb", "0.0001",
                 "--port", "70000", "--index-threads", "0", "--index", "kb"]) == 2
    err = capsys.readouterr().err
    assert ("invalid server setting(s): --port ($SMYSL_PORT) (0..65535), --max-request-mb "
            "(a whole number >= 1024 bytes), --index-threads (>= 1)") in err
    with pytest.raises(ValueError, match=r"max_queue \(>= 1\)"):
        ServerConfig(max_queue=0)  # the Python API keeps its field names
    import numpy as np  # numpy integers are integers; text and flags are no durations

    assert ServerConfig(max_request_bytes=np.int64(2**20)).max_request_bytes == 2**20
    for bad in ("5", True):
        with pytest.raises(ValueError, match=r"max_wait_ms"):
            ServerConfig(max_wait_ms=bad)  # type: ignore[arg-type]
    # inf: a traceback (OverflowError) for the size; every request held until its timeout
    # for the wait; a key with spaces around it, which no client can send (401 for all)
    for flags, says in ((["--max-request-mb", "inf"], "--max-request-mb (a whole number"),
                        (["--max-request-mb", "nan"], "--max-request-mb (a whole number"),
                        (["--max-wait-ms", "inf"], "--max-wait-ms (>= 0, finite)"),
                        (["--request-timeout-s", "inf"],
                         "--request-timeout-s (> 0 and finite; no limit: 0 on the command"),
                        (["--api-key", "abc "], "must not start or end with spaces"),
                        (["--served-name", " "], "--served-name (not empty)")):
        assert main(["serve", "--model", "/no/such/model", *flags]) == 2, flags
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


def test_flags_not_given_keep_the_configs_defaults() -> None:
    """The serve flags had defaults of their own (a copy of each ServerConfig default, the
    request token cap among them); given ones are converted to the fields' units."""
    import argparse

    from smysl.commands import serve

    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    config = serve._server_config(p.parse_args(["--model", "m"]), "m", {})
    default = ServerConfig()
    for field in ("max_batch_requests", "max_queue", "max_inputs", "max_request_bytes",
                  "max_request_tokens", "request_timeout_s", "switch_interval_s"):
        assert getattr(config, field) == getattr(default, field), field
    args = p.parse_args(["--model", "m", "--max-request-mb", "2", "--request-timeout-s", "0",
                         "--switch-interval-ms", "0", "--max-request-tokens", "7"])
    config = serve._server_config(args, "m", {})
    assert (config.max_request_bytes, config.request_timeout_s, config.switch_interval_s,
            config.max_request_tokens) == (2 << 20, None, None, 7)


def test_gil_switch_interval_is_short_only_where_a_model_computes_in_process(
        tiny, tiny_dir, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """``switch_interval_s="auto"`` (the default): 1 ms where a served model computes in the
    server process (its compute thread re-takes the GIL between torch ops), Python's own 5 ms
    where none does (an engine process, a remote API: a shorter one only takes the GIL from
    the event loop more often); a number or None given applies as given."""
    import dataclasses
    import sys

    from server_helpers import HashEmbedder

    import smysl.server.app as app_mod
    from smysl.server.config import IN_PROCESS_SWITCH_S, switch_interval

    class Remote(HashEmbedder):
        remote = True

    mine = HashEmbedder()  # a model class of yours: in this process, no device named
    assert mine.info().device is None and mine.info().process is None
    assert switch_interval("auto", [tiny]) == IN_PROCESS_SWITCH_S == 0.001
    assert switch_interval("auto", [mine]) == 0.001
    assert switch_interval("auto", [Remote()]) is None
    assert switch_interval(0.004, [Remote()]) == 0.004 and switch_interval(None, [tiny]) is None

    async def stopped(*_: Any) -> int:
        return 0

    set_to: list[float] = []
    monkeypatch.setattr(app_mod, "_supervise", stopped)
    monkeypatch.setattr(sys, "setswitchinterval", set_to.append)
    config = ServerConfig(port=0)
    assert app_mod.serve(tiny, config) == 0 and set_to == [0.001]  # tiny: in process
    from smysl import Embedder

    child_model = Embedder.load(str(tiny_dir), device="cpu", process=True)
    try:
        assert child_model.info().process is not None
        assert switch_interval("auto", [child_model]) is None
        assert switch_interval("auto", [child_model, mine]) == 0.001
        assert app_mod.serve(child_model, config) == 0 and set_to == [0.001]  # nothing set
    finally:
        child_model.close()
    assert app_mod.serve(tiny, dataclasses.replace(
        config, switch_interval_s=0.003)) == 0 and set_to[-1] == 0.003


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, pgrep")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stopped_server_exits_0_having_closed_its_engine(tiny_dir: Path, sig: str) -> None:
    """SIGTERM (or Ctrl-C) to ``smysl serve``: status 0, and its engine process ended with it
    (closed, not left to notice the orphaning). uvicorn raised the signal again once it had
    stopped: the process died of it (-15) before ``smysl serve`` closed its models."""
    import signal
    import subprocess
    import time

    import httpx
    from live_http import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "smysl.cli", "serve", "--model", str(tiny_dir), "--port",
         str(port), "--device", "cpu", "--threads", "1"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True)  # Ctrl-C reaches the server alone
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        engine = [p for p in subprocess.run(["pgrep", "-P", str(proc.pid)],
                                            capture_output=True, text=True).stdout.split()
                  if Path(f"/proc/{p}/comm").read_text().strip() == ENGINE]
        assert len(engine) == 1
        proc.send_signal(getattr(signal, sig))
        err = proc.communicate(timeout=30)[1].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert not Path(f"/proc/{engine[0]}").exists()
    # the engine process ended cleanly: a thread of its that ended while it finalised
    # aborted it at 4 of 10 stops (std::terminate, exit -6)
    assert "terminate called" not in err and "Fatal Python error" not in err, err[-3000:]


def _forced_stop(script: Path, port: int) -> tuple[int | None, float, str, list[object]]:
    """Start ``script`` (a server on ``port``), send one request, and SIGTERM it twice while
    that request computes -> the exit status, seconds from the second signal to the exit,
    stderr, and the request's answer."""
    import signal
    import subprocess
    import threading
    import time

    import httpx

    proc = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    answer: list[object] = []

    def slow() -> None:
        try:
            answer.append(httpx.post(f"{url}/v1/embeddings", json={"input": "x"},
                                     timeout=60).status_code)
        except httpx.HTTPError as e:
            answer.append(type(e).__name__)

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = threading.Thread(target=slow)
        client.start()
        time.sleep(0.5)  # the request computes
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the first stop waits for the request
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode(errors="replace")
        took = time.monotonic() - t
        client.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, took, err, answer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_a_second_stop_does_not_wait_for_the_batch_being_computed(tmp_path: Path) -> None:
    """A second SIGTERM while a batch computes: the server exits at once, status 0, the
    request cut off with the 503 of a shutdown, and no shutdown error logged. It waited for
    the batch (26 s of a 30 s one) and logged the cancelled lifespan as a traceback."""
    from live_http import free_port

    port = free_port()
    script = tmp_path / "serve.py"
    script.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]\n"
        "from server_helpers import HashEmbedder\n"
        "from smysl.server import ServerConfig, serve\n"
        "emb = HashEmbedder()\n"
        "emb.gate.clear()  # every batch computes for 30 s\n"
        f"sys.exit(serve(emb, ServerConfig(host='127.0.0.1', port={port}, "
        "graceful_timeout_s=30, access_log=False)))\n")
    code, took, err, answer = _forced_stop(script, port)
    assert code == 0 and took < 5, (code, took, err[-3000:])
    assert answer == [503], answer
    assert "Traceback" not in err and "ERROR" not in err, err[-3000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals as on Linux")
def test_a_forced_stop_ends_an_in_process_pass_and_exits_cleanly(tiny_dir: Path,
                                                                  tmp_path: Path) -> None:
    """``--in-process``: a second SIGTERM while a CPU pass computes stops the pass at its next
    layer, and the process exits with status 0. It aborted (``terminate called without an
    active exception``, status -6): the batch's thread was still inside torch when the
    interpreter exited (the 0.6B shape: every time in 5 stops)."""
    from live_http import free_port

    port = free_port()
    script = tmp_path / "serve.py"
    # each layer runs 1.5 s of matrix products first: the pass is inside torch when stopped
    # (a count of products was 1-3 s on some CPUs, 0.3 s on a Xeon: the request had ended)
    script.write_text(
        "import sys, time, torch\n"
        "from smysl.qwen3 import model\n"
        "forward = model.DecoderLayer.forward\n"
        "a = torch.ones(1024, 1024)\n"
        "def slow(self, *args, **kwargs):\n"
        "    end = time.monotonic() + 1.5\n"
        "    while time.monotonic() < end:\n"
        "        torch.mm(a, a)\n"
        "    return forward(self, *args, **kwargs)\n"
        "model.DecoderLayer.forward = slow\n"
        "from smysl.cli import main\n"
        f"sys.exit(main(['serve', '--model', {str(tiny_dir)!r}, '--port', '{port}', "
        "'--in-process', '--device', 'cpu', '--no-access-log']))\n")
    code, took, err, answer = _forced_stop(script, port)
    assert "terminate called" not in err and "Fatal Python error" not in err, err[-3000:]
    assert code == 0 and took < 10, (code, took, err[-3000:])
    assert answer == [503], answer


def test_the_server_s_own_key_from_the_environment_goes_to_no_upstream(
        tiny_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """`SMYSL_API_KEY=front smysl serve --model smysl:URL#m` sent the front server's key to the
    upstream (a `smysl:` client reads the same variable). The server keeps a key it took from
    the environment to itself; the upstream's is $SMYSL_REMOTE_API_KEY."""
    import smysl.registry

    seen: dict[str, Any] = {}
    real_load = smysl.registry.load

    def load(name: str, options: Any) -> Any:
        seen["env at load"] = (os.environ.get("SMYSL_API_KEY"),
                               os.environ.get("SMYSL_REMOTE_API_KEY"))
        return real_load(name, options)

    def fake_serve(embedder: Any, config: ServerConfig, *, ready: Any) -> int:
        seen["key"] = config.api_key
        return 0

    monkeypatch.setattr(smysl.server, "serve", fake_serve)
    monkeypatch.setattr(smysl.registry, "load", load)
    monkeypatch.setenv("SMYSL_API_KEY", "front-only")
    monkeypatch.setenv("SMYSL_REMOTE_API_KEY", "upstream")
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--in-process"]) == 0
    assert seen == {"env at load": (None, "upstream"), "key": "front-only"}
    # a key given as a flag: the variable may be meant for an upstream, and stays
    monkeypatch.setenv("SMYSL_API_KEY", "for-the-upstream")
    assert main(["serve", "--model", str(tiny_dir), "--device", "cpu", "--in-process",
                 "--api-key", "flag"]) == 0
    assert seen == {"env at load": ("for-the-upstream", "upstream"), "key": "flag"}


def test_a_grace_period_under_a_second_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: graceful_timeout_s went to uvicorn as int(), so 0.9 s cut the requests in
    flight at once."""
    import uvicorn
    from server_helpers import HashEmbedder

    from smysl.server import ServerConfig, serve

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def config(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(uvicorn, "Config", config)
    with pytest.raises(Stop):
        serve(HashEmbedder(), ServerConfig(port=0, graceful_timeout_s=0.9))
    assert seen["timeout_graceful_shutdown"] == 0.9
