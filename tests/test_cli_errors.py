"""The command-line tools tell bad input from bugs: a project error (common.errors.UserError)
is one line and exit 2; anything else, such as an error raised inside numpy or torch, keeps
its traceback and exits 1, never passing for the user's mistake.  Real CLI processes; the
bug is planted by replacing one function the command calls, as no honest input causes one."""
from __future__ import annotations

import subprocess
import sys

import pytest

PLANT = """
import sys, {module} as target
def broken(*args, **kwargs):
    raise {error}("planted bug")
target.{function} = broken
from {cli} import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("cli, module, function, args", [
    ("realtime.cli", "realtime.report", "write_report", ["report", "x.jsonl", "--html", "x.html"]),
    ("trainer.cli", "engines.card", "read_card", ["card", "some-bundle"]),
])
@pytest.mark.parametrize("error", ["ValueError", "RuntimeError", "OSError"])
def test_a_bug_keeps_its_traceback_and_exits_1(tmp_path, cli, module, function, args, error):
    code = PLANT.format(module=module, function=function, error=error, cli=cli)
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" in result.stderr and f"{error}: planted bug" in result.stderr, result.stderr


def test_a_user_error_is_one_line_and_exits_2(tmp_path):
    for command in (["realtime.cli", "report", "missing.jsonl", "--html", "x.html"],
                    ["trainer.cli", "evaluate", "no-such-run", "--data", "synthetic:nowhere", "--report", "r"]):
        result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "error:" in result.stderr and command[2] in result.stderr, result.stderr
