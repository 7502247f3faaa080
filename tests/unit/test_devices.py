import warnings

import pytest
import torch
from torch import nn

from agentfactory import devices
from agentfactory.optim import OptimizerConfig, build_optimizer


@pytest.mark.parametrize("fast", [False, True])
def test_auto_dtype_follows_native_bfloat16(monkeypatch, fast):
    monkeypatch.setattr(devices, "fast_bfloat16", lambda device_type: fast)
    cpu = torch.device("cpu")
    assert devices.resolve_dtype("auto", cpu) == ("bfloat16" if fast else "float32")
    assert devices.resolve_dtype("float32", cpu) == "float32"
    model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 8, bias=False), nn.Linear(8, 16))
    muon = build_optimizer(model, OptimizerConfig()).muon
    assert muon.param_groups[0]["ns_dtype"] == ("bfloat16" if fast else "float32")
    assert (
        build_optimizer(model, OptimizerConfig(ns_dtype="float32")).muon.param_groups[0]["ns_dtype"]
        == "float32"
    )


def test_explicit_bfloat16_without_native_kernels_is_kept_and_warned(monkeypatch):
    monkeypatch.setattr(devices, "fast_bfloat16", lambda device_type: False)
    with pytest.warns(UserWarning, match="no native kernels.*dtype: auto"):
        assert devices.resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"
    monkeypatch.setattr(devices, "fast_bfloat16", lambda device_type: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert devices.resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"


def test_cuda_bfloat16_is_only_reported_where_cuda_has_it():
    assert devices.fast_bfloat16("cuda") == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert devices.fast_bfloat16("meta") is False
