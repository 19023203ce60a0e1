from __future__ import annotations

import logging

import onnxruntime as ort
import pytest

from kairos.models import session as session_mod
from kairos.models.session import CPU, CUDA, ProviderError, SessionOptions, choose_providers, create_session

from models_factories import tiny_ranker_onnx


def test_cpu_fallback_when_cuda_provider_is_not_built(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    assert choose_providers("auto") == [CPU]
    with caplog.at_level(logging.INFO, logger="kairos.models.session"):
        s = create_session(tiny_ranker_onnx(tmp_path / "m.onnx"))
    assert s.get_providers()[0] == CPU
    assert "runs on CPUExecutionProvider" in caplog.text


def test_cpu_fallback_when_cuda_is_built_but_no_gpu(monkeypatch):
    # onnxruntime-gpu lists CUDA even without a GPU; without a driver we must not ask for it.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(session_mod, "gpu_present", lambda: False)
    assert choose_providers("auto") == [CPU]
    monkeypatch.setattr(session_mod, "gpu_present", lambda: True)
    assert choose_providers("auto") == [CUDA, CPU]


def test_required_gpu_without_gpu_is_a_clear_error(monkeypatch, tmp_path):
    if session_mod.gpu_present():
        pytest.skip("a GPU is present")
    path = tiny_ranker_onnx(tmp_path / "m.onnx")
    with pytest.raises(ProviderError, match="device='cuda' was required"):
        create_session(path, SessionOptions(device="cuda"))


def test_threads_are_applied(tmp_path):
    s = create_session(tiny_ranker_onnx(tmp_path / "m.onnx"), SessionOptions(device="cpu", intra_op_threads=1))
    assert s.get_session_options().intra_op_num_threads == 1


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match="device"):
        choose_providers("tpu")


def test_spinning_can_be_disabled(tmp_path):
    s = create_session(tiny_ranker_onnx(tmp_path / "m.onnx"), SessionOptions(device="cpu", allow_spinning=False))
    assert s.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
