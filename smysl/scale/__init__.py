"""Corpus-scale embedding: resumable jobs over JSONL/CSV/Parquet corpora (:func:`run_job`),
writing a Parquet dataset or an index. Nothing here imports Ray."""

from smysl.scale.job import (
    BadRowError,
    JobConfig,
    JobInterrupted,
    JobReport,
    job_fingerprint,
    run_job,
)

__all__ = ["BadRowError", "JobConfig", "JobInterrupted", "JobReport", "job_fingerprint",
           "run_job"]


def embed_dataset(*args: object, **kwargs: object) -> object:
    """:func:`smysl.scale.ray_data.embed_dataset` (imports Ray only when called)."""
    from smysl.scale.ray_data import embed_dataset as run

    return run(*args, **kwargs)  # type: ignore[arg-type]
