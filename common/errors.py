"""The project's user errors: input that cannot be used, said in words its user can act on.

The command-line tools (realtime.cli, trainer.cli) print a UserError's message on one line
and exit 2.  Any other exception is a bug, in this project or a library below it (torch,
numpy, ONNX Runtime): it keeps its traceback and exits 1, so it is never mistaken for bad
input.  Each error type of the project that means bad input (a setting, a file, a bundle, a
device, a data set) derives from UserError; where it replaced a built-in type, it derives
from that too, so code that caught the built-in still does.
"""
from __future__ import annotations


class UserError(Exception):
    """Input that cannot be used; the message says which and why."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory the user named that is not there, or not what it must be."""


class InvalidInput(UserError, ValueError):
    """A value or file the user gave that cannot be used (a setting's own error is ConfigError)."""
