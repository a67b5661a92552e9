"""A stage forked by multiprocessing's fork server outlives that server, and the supervisor still
watches it (realtime.processes, issue 25): real processes, a real SIGKILL of the server."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest

from realtime.forkserver import restart_if_dead
from realtime.processes import SERVER_GONE, StageProcess


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _server_pid() -> int:
    return multiprocessing.forkserver._forkserver._forkserver_pid  # (the only handle on it)


def _forked_then_server_killed(seconds: float) -> tuple[multiprocessing.Process, StageProcess, int]:
    """A process forked by the fork server, sleeping `seconds`; then the server gets SIGKILL."""
    proc = multiprocessing.get_context("forkserver").Process(target=_sleep, args=(seconds,), daemon=True)
    proc.start()
    server = _server_pid()
    os.kill(server, signal.SIGKILL)
    return proc, StageProcess(proc, forked=True), server


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_a_forked_stage_outlives_its_fork_server_and_is_watched_by_pid():
    proc, stage, server = _forked_then_server_killed(60)
    deadline = time.monotonic() + 10
    while proc.exitcode is None:  # multiprocessing alone: the server's socket closed, "exited 255"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.exitcode == SERVER_GONE
    assert stage.is_alive() and stage.by_pid  # it runs on, watched by pid
    new = restart_if_dead()
    assert new is not None and new != server and restart_if_dead() is None  # once
    later = multiprocessing.get_context("forkserver").Process(target=_sleep, args=(0,), daemon=True)  # forked by the new server
    later.start()
    later.join(10)
    assert later.exitcode == 0
    stage.kill()  # multiprocessing would no longer signal it (it believes it exited)
    stage.join(5)
    assert not stage.is_alive()
    assert stage.exitcode == SERVER_GONE and "lost with the fork server" in stage.describe_exit()


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_a_stage_that_reported_done_ended_cleanly_though_its_code_is_lost():
    _, stage, _ = _forked_then_server_killed(0.5)
    stage.done()  # the supervisor read its `done` report
    stage.join(10)
    assert stage.exitcode == 0
    restart_if_dead()
