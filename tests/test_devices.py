"""common.devices: the one rule by which every `device` setting is read."""
import pytest

from common.devices import DEVICES, check_device, resolve_device
from common.settings import ConfigError


def test_auto_is_the_gpu_only_where_the_runtime_sees_one():
    assert resolve_device("auto", lambda: True) == "cuda"
    assert resolve_device("auto", lambda: False) == "cpu"
    assert resolve_device("cuda", lambda: True) == "cuda"


def test_the_cpu_never_asks_the_runtime():
    def no_asking() -> bool:
        raise AssertionError("has_cuda was asked for device cpu")

    assert resolve_device("cpu", no_asking) == "cpu"


def test_a_gpu_that_is_not_there_is_an_error_naming_the_setting_and_runtime():
    with pytest.raises(ConfigError, match=r"\[asr\] device = 'cuda', but CTranslate2 sees no CUDA GPU"):
        resolve_device("cuda", lambda: False, "[asr] device", runtime="CTranslate2")


def test_unknown_names_are_refused_and_gpu_numbers_only_where_asked():
    assert set(DEVICES) == {"auto", "cpu", "cuda"}
    with pytest.raises(ConfigError, match=r"\[train\] device 'gpu': expected one of auto, cpu, cuda$"):
        check_device("gpu", "[train] device")
    with pytest.raises(ConfigError, match="device 'cuda:1'"):
        check_device("cuda:1")
    assert resolve_device("cuda:1", lambda: True, gpu_index=True) == "cuda:1"
    with pytest.raises(ConfigError, match="or cuda:N"):
        check_device("cuda:x", gpu_index=True)
