"""Where a model runs: the device names every `device` setting accepts, and the one rule for "auto".

[model] device, [train] device, [asr] device and `trainer teach --device` each take "auto",
"cpu" or "cuda" (training code also takes one GPU by number, "cuda:1").  "auto" is the GPU
when the runtime that will run the model sees one, else the CPU; a GPU asked for by name and
not there is an error, never a silent CPU run.  Which runtime is asked (PyTorch, CTranslate2)
is the caller's: it passes its own test as `has_cuda`, asked only where the answer needs it,
since asking can mean importing that runtime.
"""
from __future__ import annotations

import re
from typing import Callable

from common.settings import ConfigError

DEVICES = ("auto", "cpu", "cuda")
_ONE_GPU = re.compile(r"cuda:\d+")


def check_device(device: str, setting: str = "device", gpu_index: bool = False) -> str:
    """`device` when it is one of DEVICES (or "cuda:N" with gpu_index), else ConfigError naming `setting`."""
    if device in DEVICES or (gpu_index and isinstance(device, str) and _ONE_GPU.fullmatch(device)):
        return device
    names = ", ".join(DEVICES) + (" or cuda:N" if gpu_index else "")
    raise ConfigError(f"{setting} {device!r}: expected one of {names}")


def resolve_device(device: str, has_cuda: Callable[[], bool], setting: str = "device",
                   runtime: str = "PyTorch", gpu_index: bool = False) -> str:
    """"cpu", "cuda" (or "cuda:N") for the setting `device`, where `has_cuda()` says whether
    `runtime` sees a GPU; ConfigError for a name not in DEVICES or a GPU that is not there."""
    check_device(device, setting, gpu_index)
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda" if has_cuda() else "cpu"
    if not has_cuda():
        raise ConfigError(f"{setting} = {device!r}, but {runtime} sees no CUDA GPU (use \"auto\" or \"cpu\")")
    return device
