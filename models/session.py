"""The one place ONNX Runtime sessions are created: provider choice, threads, logging of what really runs.

onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even on a machine without a GPU, and a session asked
for CUDA there silently runs on the CPU. So the provider that runs is read back from ``session.get_providers()[0]``,
logged, and -- when a GPU is required -- checked.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ProviderError(RuntimeError):
    """A GPU was required but the session does not run on it."""


@dataclass(frozen=True)
class SessionOptions:
    """Thread and provider settings for :func:`create_session` (filled from the engine's settings).

    ``device``: ``"auto"`` (CUDA when a GPU is present, else CPU), ``"cpu"``, or ``"cuda"`` (fail without a GPU).
    Zero threads lets onnxruntime choose.
    """

    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"  # "basic" | "extended" | "all" | "disable"
    #: onnxruntime's worker threads busy-wait between runs by default: lowest latency on a dedicated machine, but it
    #: takes CPU from everything else in the process (event loop, torch, other models) on a shared one.
    allow_spinning: bool = True


_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def gpu_present() -> bool:
    """True when an NVIDIA driver is visible (the CUDA provider would otherwise fall back silently)."""
    return Path("/proc/driver/nvidia/gpus").exists() or Path("/dev/nvidia0").exists()


def choose_providers(device: str = "auto") -> list[str]:
    """Providers to ask for, in order of preference; CPU is always last as the fallback."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return [CPU]
    cuda_built = CUDA in ort.get_available_providers()
    if device == "cuda":
        if not cuda_built:
            raise ProviderError("device='cuda' was required but this onnxruntime build has no CUDA provider")
        return [CUDA]
    return [CUDA, CPU] if cuda_built and gpu_present() else [CPU]


def create_session(model: str | os.PathLike | bytes, options: SessionOptions | None = None) -> ort.InferenceSession:
    """Create an inference session for ``model`` (a path or serialized bytes), CUDA first when usable.

    >>> import onnx, onnx.helper as h
    >>> g = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g",
    ...     [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
    ...     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    >>> create_session(h.make_model(g).SerializeToString(), SessionOptions(device="cpu")).get_providers()[0]
    'CPUExecutionProvider'
    """
    options = options or SessionOptions()
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = _OPT_LEVELS[options.graph_optimization]
    if not options.allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = choose_providers(options.device)
    if options.device == "cuda":
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    model_arg = model if isinstance(model, bytes) else os.fspath(model)
    try:
        session = ort.InferenceSession(model_arg, sess_options=so, providers=providers)
    except Exception as exc:
        if options.device != "cuda":
            raise
        raise ProviderError(f"device='cuda' was required but CUDA could not be used: {exc}") from exc
    running = session.get_providers()[0]
    if options.device == "cuda" and running != CUDA:
        raise ProviderError(f"device='cuda' was required but the session runs on {running}")
    name = "<bytes>" if isinstance(model, bytes) else os.fspath(model)
    log.info("onnx session %s runs on %s (asked %s)", name, running, providers)
    return session


def running_provider(session: ort.InferenceSession) -> str:
    """The provider that actually executes the session (the first of ``get_providers()``)."""
    return session.get_providers()[0]
