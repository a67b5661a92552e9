"""What environment the pipeline's stage processes are spawned with."""
from __future__ import annotations


def _blas_threads(queue) -> None:
    import os

    import numpy  # noqa: F401  (as a stage imports it: OpenBLAS reads the variable then)
    queue.put(os.environ.get("OPENBLAS_NUM_THREADS"))


def test_stage_processes_get_single_threaded_blas_and_the_caller_keeps_its_environment(monkeypatch):
    """numpy's OpenBLAS threads spin after every product: a stage gets one thread, the
    process that spawns it keeps its own setting (or none)."""
    import multiprocessing
    import os

    from realtime.pipeline import stage_environment

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with stage_environment():
        proc = ctx.Process(target=_blas_threads, args=(queue,))
        proc.start()
    assert queue.get(timeout=60) == "1"
    proc.join(30)
    assert "OPENBLAS_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # a user's own choice is kept
    with stage_environment():
        proc = ctx.Process(target=_blas_threads, args=(queue,))
        proc.start()
    assert queue.get(timeout=60) == "2"
    proc.join(30)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2"
