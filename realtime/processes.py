"""A stage's process as the supervisor watches it, also once the fork server it came from is gone.

multiprocessing learns that a stage forked by its fork server (realtime.forkserver) has
ended from the server: it writes the stage's exit code on a socket.  When the server itself
dies (killed, or by the kernel's OOM killer: it holds every stage's libraries), that socket
closes, and multiprocessing then reports every stage it forked as ended with code 255 and no
longer signals them (it signals only processes it still believes to run), although the
stages run on (realtime.framework.Stage._orphaned).  StageProcess then watches the stage by its
pid instead.  A stage that ends after its fork server has gone is not our child, so its exit
code is lost: a `done` report (done()) says it ended cleanly.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

from common.atomic import process_alive

SERVER_GONE = 255  # what multiprocessing reports for a forked process whose fork server died


class StageProcess:
    def __init__(self, proc: multiprocessing.Process, forked: bool):
        """proc: started; forked: by a fork server (otherwise spawned, our own child)."""
        self.proc, self.pid, self.forked = proc, proc.pid, forked
        self.name = proc.name
        self.by_pid = False  # its fork server has died: watched by pid from now on
        self._done = False  # it reported `done`: if it then ends, it ended cleanly

    def done(self) -> None:
        self._done = True

    @property
    def exitcode(self) -> int | None:
        """None while it runs; then its exit code (negative: the signal that ended it), 0 when it
        reported `done` but its code was lost with its fork server, SERVER_GONE when it was not."""
        if not self.by_pid:
            code = self.proc.exitcode
            if code != SERVER_GONE or not self.forked:
                return code
            self.by_pid = True
        if process_alive(self.pid):
            return None
        return 0 if self._done else SERVER_GONE

    def is_alive(self) -> bool:
        return self.exitcode is None

    def describe_exit(self) -> str:
        code = self.exitcode
        if code == SERVER_GONE and self.by_pid:
            return "exited (its exit code was lost with the fork server)"
        return f"exited with code {code}"

    def _signal(self, sig: int) -> None:
        if self.is_alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            if self.by_pid:
                time.sleep(0.02 if left is None else min(0.02, left))
            else:
                self.proc.join(left)  # returns at its exit, or when its fork server dies
