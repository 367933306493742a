"""The Hugging Face cache and offline switch, read from the environment at call time as the Hub
library reads them (it computes both once, at import: a later change would leave smysl and it
disagreeing). Without torch: the engine's loading and the providers' tokenizer lookup share it.
"""

from __future__ import annotations

import os
from pathlib import Path


def offline_variable() -> str | None:
    """The environment variable that turns offline mode on, read at call time by the Hub
    library's own rule (``HF_HUB_OFFLINE``, else ``TRANSFORMERS_OFFLINE``; "1", "on", "yes",
    "true"), or None when online. The library reads it once, at import: a later change would
    otherwise leave smysl and it disagreeing on whether the network may be used."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:  # set, even to "0": the first one set decides, as in huggingface_hub
            return name if value.upper() in ("1", "ON", "YES", "TRUE") else None
    return None


def hub_cache(cache_dir: str | None = None) -> Path:
    """The Hugging Face cache directory in use (``HF_HUB_CACHE``, ``HF_HOME``/hub, ...), read
    from the environment at call time."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    # huggingface_hub's precedence (its constants.py), re-read here: the library computes it
    # once at import, so an HF_HOME set afterwards (a notebook, a test) would be missed
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    cache = (env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
             or os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub"))
    return Path(os.path.expandvars(os.path.expanduser(cache)))
