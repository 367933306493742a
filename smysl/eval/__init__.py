"""Evaluation harness: MTEB-style tasks on Russian and English data, reports and plots.

>>> from smysl.eval import EvalConfig, run                               # doctest: +SKIP
>>> run(EvalConfig(models=("st:all-minilm-l6-v2",), tasks=("sts",)))     # doctest: +SKIP

Needs the ``eval`` extra (scikit-learn, scipy, matplotlib); see docs/eval.md.
"""

from smysl.eval.config import EvalConfig
from smysl.eval.results import ModelResult, TaskResult
from smysl.eval.runner import evaluate_model, run
from smysl.eval.tasks import TASKS, Task

__all__ = ["TASKS", "EvalConfig", "ModelResult", "Task", "TaskResult", "evaluate_model", "run"]
