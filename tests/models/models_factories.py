"""Factories: a tiny hand-built ONNX ranker (no torch) published into a temporary model directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kairos.schemas.features import RANKER_DENSE_DIM, RANKER_FEATURE_VERSION

onnx = pytest.importorskip("onnx", reason="onnx is in the train extra")
from onnx import TensorProto, helper  # noqa: E402


def tiny_ranker_onnx(path: Path, weight: float = 1.0) -> Path:
    """score = weight * sum(dense) ; click_logit = -0.5 * position (float)."""
    nodes = [
        helper.make_node("ReduceSum", ["dense", "axes"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "w"], ["score"]),
        helper.make_node("Cast", ["position"], ["pf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pf", "half"], ["click_logit"]),
        helper.make_node("Cast", ["item_id"], ["unused_i"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["category_id"], ["unused_c"], to=TensorProto.FLOAT),
    ]
    inits = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("w", TensorProto.FLOAT, [], [weight]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [-0.5]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_ranker",
        [
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["B", RANKER_DENSE_DIM]),
            helper.make_tensor_value_info("category_id", TensorProto.INT64, ["B"]),
            helper.make_tensor_value_info("item_id", TensorProto.INT64, ["B"]),
            helper.make_tensor_value_info("position", TensorProto.INT64, ["B"]),
        ],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B"]),
            helper.make_tensor_value_info("click_logit", TensorProto.FLOAT, ["B"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def publish_tiny_ranker(model_dir: Path, version: str, weight: float = 1.0, **fields):
    from kairos.models.registry import publish_model

    src = tiny_ranker_onnx(model_dir.parent / f"tiny_{version}.onnx", weight)
    fields.setdefault("feature_version", RANKER_FEATURE_VERSION)
    return publish_model(model_dir, "ranker", version, "ranker", src, **fields)


def ranker_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense": rng.normal(size=(n, RANKER_DENSE_DIM)).astype(np.float32),
        "category_id": rng.integers(1, 100, n),
        "item_id": rng.integers(1, 1000, n),
        "position": rng.integers(0, 4, n),
    }
