"""What an evaluation run measures: scores per task and dimension, and throughput, per model.

Plain dataclasses with no dependency on how they were computed (:mod:`smysl.eval.runner`) or how
they are written (:mod:`smysl.eval.report`).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class TaskResult:
    """Scores of one task for one model, per evaluated dimension."""

    task: str
    kind: str
    language: str
    description: str
    main_metric: str
    metric_label: str
    instruction: str | None
    size: dict[str, int]
    #: dimension -> every metric the task computes
    scores: dict[int, dict[str, Any]]
    seconds: float

    def main(self, dims: int) -> float:
        return float(self.scores[dims][self.main_metric])


@dataclass
class ModelResult:
    """Everything measured for one model."""

    model: str
    dimensions: int
    min_dimensions: int
    instruction_aware: bool
    evaluated_dimensions: list[int]
    skipped_dimensions: list[int]
    load_seconds: float
    embed_seconds: float
    texts_embedded: int
    tokens_embedded: int
    eval_seconds: float
    tasks: list[TaskResult] = field(default_factory=list)
    machine: str = field(default_factory=lambda: _machine())

    @property
    def texts_per_s(self) -> float | None:
        return self.texts_embedded / self.embed_seconds if self.embed_seconds > 0 else None

    @property
    def tokens_per_s(self) -> float | None:
        if self.embed_seconds <= 0 or not self.tokens_embedded:
            return None
        return self.tokens_embedded / self.embed_seconds

    def mean_main(self, dims: int) -> float:
        return float(np.mean([t.main(dims) for t in self.tasks])) if self.tasks else float("nan")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["texts_per_s"] = self.texts_per_s
        out["tokens_per_s"] = self.tokens_per_s
        return out


def model_slug(name: str) -> str:
    """A model name as a file or folder name (reports, on-disk embeddings)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _machine() -> str:
    """Short host description for the throughput plot: architecture, cores, GPU if any."""
    text = f"{platform.machine()}, {os.cpu_count()} cores"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text
