"""Export the ranker to ONNX (named inputs, dynamic batch), check parity, and make the int8 variant."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch

from kairos.onnx_export.ranker_model import INPUT_NAMES, DeepFMCrossRanker, example_inputs
from kairos.schemas.features import RANKER_OUTPUTS

log = logging.getLogger(__name__)

OPSET = 18


def export_ranker(model: DeepFMCrossRanker, path: Path, opset: int = OPSET) -> Path:
    """Write ``model`` to ``path`` as one self-contained ONNX file with a dynamic batch axis ``B``."""
    model.eval()
    inputs = example_inputs(batch=8)
    batch = torch.export.Dim("B", min=1, max=1 << 20)
    dynamic = {name: {0: batch} for name in INPUT_NAMES}
    program = torch.onnx.export(
        model,
        (),
        kwargs=inputs,
        input_names=list(INPUT_NAMES),
        output_names=list(RANKER_OUTPUTS),
        dynamic_shapes=dynamic,
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(path))
    _name_batch_axis(Path(path))
    return Path(path)


def _name_batch_axis(path: Path) -> None:
    # dynamo names the symbolic axis "s0"/"batch"; rename it to the contract's "B" for readable manifests.
    model = onnx.load(str(path))
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param or not dim.HasField("dim_value"):
            dim.dim_param = "B"
    onnx.save(model, str(path))


def quantize_int8(fp32_path: Path, int8_path: Path) -> Path:
    """Dynamic int8 quantization (weights int8, activations quantized at run time)."""
    return quantize_dynamic_int8(fp32_path, int8_path)


def quantize_dynamic_int8(fp32_path: Path, int8_path: Path, **options) -> Path:
    """``onnxruntime.quantization.quantize_dynamic`` to QInt8 weights on a dynamo export; ``options`` are passed on
    (e.g. ``per_channel``, ``op_types_to_quantize``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(fp32_path))
    # A dynamo export keeps value_info entries for initializers; quantize_dynamic's shape inference then fails with
    # "ShapeInferenceError ... (13) vs (16)". Dropping them is safe: they are recomputed.
    initializers = {i.name for i in model.graph.initializer}
    kept = [v for v in model.graph.value_info if v.name not in initializers]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    cleaned = Path(int8_path).with_suffix(".pre.onnx")
    onnx.save(model, str(cleaned))
    quantize_dynamic(str(cleaned), str(int8_path), weight_type=QuantType.QInt8, **options)
    cleaned.unlink()
    return Path(int8_path)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties are not needed for continuous scores)."""
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])
