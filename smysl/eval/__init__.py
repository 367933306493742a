"""Evaluation harness: MTEB-style tasks on Russian and English data, reports and plots.

>>> from smysl.eval import EvalConfig, run                               # doctest: +SKIP
>>> run(EvalConfig(models=("st:all-minilm-l6-v2",), tasks=("sts",)))     # doctest: +SKIP
>>> run(EvalConfig(models=("qwen3-embedding:0.6b",), tasks=("rerank",),  # doctest: +SKIP
...                reranker="Qwen/Qwen3-Reranker-0.6B"))

Needs the ``eval`` extra (scikit-learn, scipy, matplotlib); see docs/eval.md.
"""

from smysl.eval.config import EvalConfig
from smysl.eval.report import write_reports
from smysl.eval.rerank import RERANK_TASKS, RerankTask
from smysl.eval.results import ModelResult, RerankResult, TaskResult
from smysl.eval.runner import evaluate_model, run
from smysl.eval.tasks import TASKS, Task

__all__ = ["RERANK_TASKS", "TASKS", "EvalConfig", "ModelResult", "RerankResult", "RerankTask",
           "Task", "TaskResult", "evaluate_model", "run", "write_reports"]
