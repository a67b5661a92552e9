"""What environment the pipeline's stage processes are spawned with."""
from __future__ import annotations


def _stage_env(queue) -> None:
    import os

    import numpy  # noqa: F401  (as a stage imports it: OpenBLAS reads its variable then)

    from realtime.forkserver import STAGE_ENV

    queue.put({k: os.environ.get(k) for k in STAGE_ENV})


def test_stage_processes_get_quiet_threads_and_the_caller_keeps_its_environment(monkeypatch):
    """numpy's OpenBLAS and CTranslate2's OpenMP threads spin between products: a stage gets
    one BLAS thread and passive OpenMP waits, the process that spawns it keeps its own
    settings (or none), and a user's own setting wins."""
    import multiprocessing
    import os

    from realtime.forkserver import STAGE_ENV, stage_environment

    assert STAGE_ENV == {"OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    for key in STAGE_ENV:
        monkeypatch.delenv(key, raising=False)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()

    def child_env() -> dict:
        with stage_environment():
            proc = ctx.Process(target=_stage_env, args=(queue,))
            proc.start()
        got = queue.get(timeout=60)
        proc.join(30)
        return got

    assert child_env() == STAGE_ENV
    assert not set(STAGE_ENV) & set(os.environ)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # a user's own choice is kept
    assert child_env() == {**STAGE_ENV, "OPENBLAS_NUM_THREADS": "2"}
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2" and "OMP_WAIT_POLICY" not in os.environ


def _what_a_stage_starts_with(queue) -> None:
    import os
    import sys

    queue.put({"ppid": os.getppid(), "modules": sorted(sys.modules), "blas": os.environ.get("OPENBLAS_NUM_THREADS")})


def test_stages_are_forked_from_a_server_that_imported_their_libraries_once():
    """Each spawned stage imported numpy, ZeroMQ, OpenCV, PyAV and faster-whisper anew; a fork
    of the server (started with the stages' environment) begins with them imported."""
    import os

    from realtime.forkserver import STAGE_PRELOAD, stage_processes

    ctx = stage_processes()
    queue = ctx.Queue()
    proc = ctx.Process(target=_what_a_stage_starts_with, args=(queue,))
    proc.start()
    got = queue.get(timeout=60)
    proc.join(30)
    assert proc.exitcode == 0
    assert got["ppid"] != os.getpid()  # the fork server's child, not this process's
    assert not set(STAGE_PRELOAD) - set(got["modules"])
    # onnxruntime starts a thread when imported, and a fork keeps only the forking thread
    assert "onnxruntime" not in got["modules"] and "torch" not in got["modules"]
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        assert got["blas"] == "1"


def test_process_alive_tells_running_exited_and_unreaped_processes_apart():
    import os
    import subprocess
    import sys
    import time

    from common.atomic import process_alive

    assert process_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    # Exited, not yet reaped: a zombie, which is no supervisor any more.
    while process_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child.pid)
    child.wait()
    assert not process_alive(child.pid)  # reaped: gone


def test_the_cli_starts_the_fork_server_before_its_own_heavy_imports():
    """`realtime replay` and `serve` start the fork server first thing: importing the CLI and the
    fork server's module loads none of numpy, ZeroMQ, OpenCV or the engines, whose imports would
    otherwise come first and delay the server's own."""
    import subprocess
    import sys

    heavy = ("numpy", "zmq", "cv2", "av", "engines", "faster_whisper", "onnxruntime")
    code = ("import sys, realtime.cli, realtime.forkserver; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
