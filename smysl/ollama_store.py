"""The local Ollama model store, read without Ollama: which models it holds and where their
GGUF files are.

Layout (``OLLAMA_MODELS``, default ``~/.ollama/models``, else the Linux service's
``/usr/share/ollama/.ollama/models``): ``manifests/<host>/<namespace>/
<model>/<tag>`` is JSON naming its layers by digest; the layer with media type
:data:`MODEL_MEDIA` is the GGUF weights, stored as ``blobs/sha256-<hex>``. Names are Ollama's:
``model:tag`` for ``registry.ollama.ai/library``, ``namespace/model:tag`` for other namespaces
there, ``host/namespace/model:tag`` elsewhere; no tag means ``latest``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODEL_MEDIA = "application/vnd.ollama.image.model"
HOST = "registry.ollama.ai"


#: Where Ollama's Linux install script keeps the store: its service runs as user ``ollama``,
#: whose home this is (``~/.ollama/models`` is where ``ollama serve`` run by hand keeps it).
SERVICE_STORE = Path("/usr/share/ollama/.ollama/models")


def ollama_root() -> Path:
    """The Ollama model store: ``OLLAMA_MODELS``, else ``~/.ollama/models``, else (when that is
    absent) the Linux service's :data:`SERVICE_STORE` where it exists."""
    named = os.environ.get("OLLAMA_MODELS")
    if named:
        return Path(named).expanduser()
    own = Path.home() / ".ollama" / "models"
    # os.path.isdir: False where the service's home is closed to this user (0750), where
    # Path.is_dir raises PermissionError (Python < 3.14) and `smysl models` failed whole
    return SERVICE_STORE if not os.path.isdir(own) and os.path.isdir(SERVICE_STORE) else own


def name_of(parts: tuple[str, ...]) -> str:
    """``(host, namespace, model, tag)`` of a manifest path -> the name Ollama shows."""
    host, namespace, model, tag = parts
    # in any case, as Ollama matches names: "Library/x" is "x"
    if host.lower() == HOST:
        return (f"{model}:{tag}" if namespace.lower() == "library"
                else f"{namespace}/{model}:{tag}")
    return f"{host}/{namespace}/{model}:{tag}"


def parts_of(name: str) -> tuple[str, str, str, str]:
    """An Ollama name -> ``(host, namespace, model, tag)``, the inverse of :func:`name_of`."""
    path, tag = name.strip(), "latest"
    if ":" in path.rsplit("/", 1)[-1]:
        path, _, tag = path.rpartition(":")
    pieces = path.split("/")
    pieces = {1: [HOST, "library", *pieces], 2: [HOST, *pieces]}.get(len(pieces), pieces)
    if len(pieces) == 3 and all(p and p not in (".", "..") and "\\" not in p
                                for p in (*pieces, tag)):
        return pieces[0], pieces[1], pieces[2], tag
    raise ValueError(f"{name!r} is not an Ollama model name (model[:tag], namespace/model[:tag] "
                     "or host/namespace/model[:tag])")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def manifests(root: Path | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, manifest) of every model in the store, sorted by path; a manifest that is no
    JSON object (damaged) is ``{}``, so that it is named as damaged, not as absent."""
    base = (root or ollama_root()) / "manifests"
    if not base.is_dir():
        return
    for path in sorted(base.glob("*/*/*/*")):
        if path.is_file() and not path.name.startswith("."):  # .DS_Store is no tag
            yield name_of(path.relative_to(base).parts), read_json(path)


def blob(root: Path, digest: str) -> Path:
    """The file of a layer digest (``sha256:<hex>`` -> ``blobs/sha256-<hex>``); ``ValueError``
    for anything else, as Ollama refuses it (a manifest cannot point outside ``blobs/``)."""
    if not _DIGEST.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a sha256 layer digest")
    return root / "blobs" / digest.replace(":", "-")


_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")


def find(name: str, root: Path | None = None) -> str | None:
    """The store's own spelling of model ``name`` (any of its forms: ``model[:tag]``,
    ``namespace/model[:tag]``, ``host/namespace/model[:tag]``), matched without regard to case
    as Ollama matches names; None when it is not there."""
    want = name_of(parts_of(name)).lower()
    return next((n for n, _ in manifests(root) if n.lower() == want), None)


def model_layer(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's weights layer (the GGUF file), None for models without one."""
    return next((x for x in layers_of(manifest) if x.get("mediaType") == MODEL_MEDIA), None)


def layers_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's layers (Go writes a nil list as ``null``; damaged entries left out)."""
    layers = manifest.get("layers")
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []


def model_blob(name: str, root: Path | None = None) -> Path:
    """The GGUF file of Ollama model ``name`` (``qwen3-embedding:8b``); ``FileNotFoundError``
    listing the store's models when it is not there."""
    root = root or ollama_root()
    path = root / "manifests" / Path(*parts_of(name))
    manifest = read_json(path)
    if not manifest and (stored := find(name, root)) is not None:  # another case
        path = root / "manifests" / Path(*parts_of(stored))
        manifest = read_json(path)
    if not manifest and path.is_file():
        raise FileNotFoundError(f"Ollama model {name!r}: its manifest is damaged (no JSON "
                                f"object in {path}); `ollama pull` it again")
    layer = model_layer(manifest) if manifest else None
    if layer is None:
        held = [n for n, _ in manifests(root)]
        there = f"it holds {', '.join(held)}" if held else "it holds no models"
        what = "has no weights layer" if manifest else "is not"
        raise FileNotFoundError(f"Ollama model {name!r} {what} in the store at {root} "
                                f"(OLLAMA_MODELS); {there}")
    try:
        path = blob(root, str(layer.get("digest", "")))
    except ValueError as e:
        raise FileNotFoundError(f"Ollama model {name!r}: its manifest is damaged ({e})") from None
    if not path.is_file():
        raise FileNotFoundError(f"Ollama model {name!r}: its weights blob {path} is missing "
                                "(`ollama pull` it again)")
    want, size = layer.get("size"), path.stat().st_size
    if isinstance(want, int) and not isinstance(want, bool) and size != want:
        # a cut blob failed later as "truncated or corrupt GGUF header", naming no model
        raise ValueError(f"Ollama model {name!r}: its weights blob {path} holds {size:,} bytes, "
                         f"its manifest says {want:,} (an interrupted pull? `ollama pull "
                         f"{name}` again)")
    return path
