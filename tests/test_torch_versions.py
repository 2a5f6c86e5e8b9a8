"""The guards for APIs newer than the torch floor (pyproject: torch >= 2.4; CI tests 2.13 only)."""

from __future__ import annotations

import pytest
import torch

import gradtx as gx
from gradtx.optim import compiled, distributed


def test_dtensor_parameters_on_a_torch_without_public_dtensor_are_refused(monkeypatch):
    """torch < 2.5 has no torch.distributed.tensor.DTensor: a parameter whose class is called
    DTensor is refused naming the version, not stepped as a plain tensor."""

    class DTensor(torch.Tensor):  # stands in for torch.distributed._tensor.DTensor
        pass

    monkeypatch.setattr(distributed, "DTensor", None)
    param = torch.zeros(3).as_subclass(DTensor).requires_grad_()
    with pytest.raises(RuntimeError, match=r"needs torch >= 2\.5"):
        gx.Optimizer([param], gx.adam(1e-3))
    assert not distributed.has_dtensors([torch.nn.Parameter(torch.zeros(3))])


def test_inductor_settings_leave_out_what_this_torch_lacks(monkeypatch):
    pytest.importorskip("torch._inductor.config")
    settings = compiled._inductor_settings()
    assert settings == compiled._INDUCTOR_CONFIG  # torch 2.13 has every one
    compiled._inductor_settings.cache_clear()
    monkeypatch.setitem(compiled._INDUCTOR_CONFIG, "no_such_setting_in_any_torch", True)
    try:
        assert "no_such_setting_in_any_torch" not in compiled._inductor_settings()
    finally:
        compiled._inductor_settings.cache_clear()
