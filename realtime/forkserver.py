"""How stage processes are started: forks of multiprocessing's fork server.

Kept apart from realtime.pipeline, with nothing but the standard library imported, so that
`realtime replay` and `serve` can start the server first thing (realtime.cli), before their own
imports: its imports are the longest wait before the first stage can run.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os


# numpy's OpenBLAS gives each process a worker thread per core that spins after every matrix
# product: in the fusion stage (its log-mel) that spinning took ~0.4 of a core in live use and
# slowed the ASR beside it. The stages' products are small, so one thread each.
# CTranslate2's OpenMP threads (the ASR's cpu_threads) likewise spin between the decoder's
# many small parallel steps, on cores the other stages need; passive waiting cut the ASR's CPU
# per replay by ~0.15 s and did not slow a transcription on an idle machine.
# The stage processes get these (read when numpy and CTranslate2 load); set one yourself to
# override it.
STAGE_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@contextlib.contextmanager
def stage_environment():
    """STAGE_ENV in os.environ while the fork server (or, without one, a stage process) is
    started: it copies the environment; this process's own environment as it was afterwards."""
    added = {k: v for k, v in STAGE_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# What the stages import, loaded once by the fork server they are started from (see
# stage_processes).  Not onnxruntime: importing it starts a thread, and a fork keeps only
# the thread that forks.
STAGE_PRELOAD = ("realtime.stages.source", "realtime.stages.segmenter", "realtime.stages.asr", "realtime.stages.faces",
                 "realtime.stages.fusion", "engines.runtime", "engines.media", "engines.faces", "cv2", "av",
                 "faster_whisper")


def stage_processes() -> multiprocessing.context.BaseContext:
    """How stage processes are started: forked from multiprocessing's fork server, where there is one.

    A stage spawned from scratch imports numpy, ZeroMQ, OpenCV, PyAV and faster-whisper
    itself, each stage again: on 2 cores that took more CPU than the ASR's own start.  The
    fork server (a fresh, single-threaded process: stages still do not inherit the caller's
    threads and sockets) imports them once; each stage is a fork of it.  It is started here,
    with STAGE_ENV, so its imports overlap what the caller does before its first stage; the
    stages get the environment it was started with.  Without fork (Windows), stages are spawned.
    """
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    multiprocessing.forkserver.set_forkserver_preload(list(STAGE_PRELOAD))
    with stage_environment():
        multiprocessing.forkserver.ensure_running()  # once per process; a no-op when it runs
    return multiprocessing.get_context("forkserver")


def restart_if_dead() -> int | None:
    """Start the fork server again if it has died (and multiprocessing's resource tracker, which
    it needs), so that stages restarted from now on are forked at once; returns the new server's
    pid when one was started.  The stages it had forked run on (realtime.processes)."""
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    server = multiprocessing.forkserver._forkserver  # private: the only handle on the server's pid
    before = getattr(server, "_forkserver_pid", None)
    with stage_environment():
        multiprocessing.forkserver.ensure_running()  # a waitpid while it runs; else a new server
    after = getattr(server, "_forkserver_pid", None)
    return after if before is not None and after != before else None
