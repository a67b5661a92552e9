"""A real Triton Inference Server for the tests: the tritonserver binary of the nvidia-pytriton
wheel, serving a model repository that `trainer export --triton` wrote, on the CPU.

That build ships the python backend only, no onnxruntime backend.  So each exported model
keeps its config.pbtxt (names, dims, max_batch_size, dynamic batching) with its `platform`
line swapped for `backend: "python"`, and gets tests/triton_onnx_model.py as model.py, which
runs the exported model.onnx with ONNX Runtime.  The wheel is installed without its
dependencies (scripts/setup.sh): only its binaries are used, not the pytriton package.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import time
import contextlib
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port

MODEL = Path(__file__).with_name("triton_onnx_model.py")
START_TIMEOUT_S = 60
# The python backend's stub is built against numpy 1 (hence the wheel's numpy<2 pin): with
# numpy 2 its output tensors come back empty.  It runs in a virtual environment of its own
# (`stub_environment`) that takes numpy 1.26 from this folder and everything else (onnxruntime)
# from this one.  scripts/setup.sh installs it:
#   pip install --no-deps --target .venv/triton-stub-site numpy==1.26.4
STUB_SITE = Path(sys.prefix) / "triton-stub-site"


def server_files() -> tuple[Path, Path]:
    """The wheel's tritonserver folder and the python backend stub for this Python, or a skip
    that says what is missing and how to install it."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nvidia-pytriton is not installed (its tritonserver binary is the test server): "
                    "pip install --no-deps nvidia-pytriton==0.7.0, as scripts/setup.sh does")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    stub = dist / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
    if not stub.exists():
        pytest.skip(f"nvidia-pytriton has no python backend stub for Python {sys.version.split()[0]} ({stub})")
    if not (STUB_SITE / "numpy").is_dir():
        pytest.skip(f"{STUB_SITE} has no numpy 1.x for the Triton python backend stub: "
                    f"pip install --no-deps --target {STUB_SITE} numpy==1.26.4, as scripts/setup.sh does")
    return dist, stub


def python_backend_repository(exported: Path, out: Path) -> Path:
    """A copy of the exported repository whose models run on the python backend."""
    shutil.copytree(exported, out)
    for config in out.glob("*/config.pbtxt"):
        text, swapped = re.subn(r'^platform: "onnxruntime_onnx"$', 'backend: "python"', config.read_text(), flags=re.M)
        assert swapped == 1, f"{config}: no onnxruntime_onnx platform line"
        config.write_text(text)
        for version in config.parent.glob("*/model.onnx"):
            shutil.copy(MODEL, version.parent / "model.py")
    return out


def stub_environment(out: Path) -> Path:
    """A virtual environment (no packages of its own) whose path is STUB_SITE, then this
    environment's site-packages: numpy 1 first, onnxruntime and the rest from here."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(out)], check=True)
    (site_packages,) = out.glob("lib/python*/site-packages")
    (site_packages / "stub.pth").write_text("\n".join([str(STUB_SITE), *site.getsitepackages()]) + "\n")
    return out


@contextmanager
def triton_server(exported: Path, work: Path):
    """Serve `exported` (a `trainer export --triton` folder); yields the HTTP url host:port.
    The server and its backend stubs are one process group, ended whatever happens."""
    import tritonclient.http as http

    dist, stub = server_files()
    repository = python_backend_repository(exported, work / "repository")
    backends = work / "backends"
    shutil.copytree(dist / "backends", backends)
    shutil.copy(stub, backends / "python" / "triton_python_backend_stub")  # the stub of this Python
    env = dict(os.environ)
    # The stub embeds libpython: it must load this interpreter's, not another 3.x's from /usr/lib
    # (whose C types do not match this interpreter's standard library); then the wheel's own libraries.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (sysconfig.get_config_var("LIBDIR"),
                                                          str(dist.parent.parent / "nvidia_pytriton.libs"),
                                                          env.get("LD_LIBRARY_PATH")) if p)
    # The stub finds its Python environment from the python3 on PATH.
    env["PATH"] = os.pathsep.join([str(stub_environment(work / "stub-env") / "bin"), env.get("PATH", "")])
    http_port = free_port()
    log = work / "tritonserver.log"
    command = [str(dist / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={backends}", f"--http-port={http_port}", "--http-address=127.0.0.1",
               "--allow-grpc=false", "--allow-metrics=false", "--exit-timeout-secs=2",
               # explicit: the tests may unload a model; * loads every model of the repository at start
               "--model-control-mode=explicit", "--load-model=*",
               "--pinned-memory-pool-byte-size=0", "--log-verbose=0"]
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"127.0.0.1:{http_port}"
    try:
        client = http.InferenceServerClient(url, connection_timeout=2, network_timeout=2)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {server.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if client.is_server_ready():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
        client.close()  # an open connection holds up the server's exit by its exit timeout
        yield url
    finally:
        stop(server)


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server (it unloads its models and ends its stubs), then SIGKILL its whole
    process group: the server if it hung, any stub that outlived it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()
