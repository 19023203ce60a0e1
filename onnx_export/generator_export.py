"""Causal LM (Llama-type: SmolLM2) -> ONNX with a KV cache, for the decoding loop in ``kairos.models.generator``.

The exported graph (names are the runtime's contract)::

    inputs   input_ids (B, S) int64, attention_mask (B, P+S) int64, position_ids (B, S) int64,
             past_key_<i>, past_value_<i> (B, kv_heads, P, head_dim) float32 for every layer i
    outputs  logits (B, vocab) float32 -- the LAST position only (all a decoding step needs; saves a
             (B, S, 49152) tensor at prefill), present_key_<i>, present_value_<i> (B, kv_heads, P+S, head_dim)

The same graph serves prefill (P = 0: an empty past) and every decode step (S = 1). Export uses
``torch.onnx.export(dynamo=True)`` with a wrapper that takes the cache as flat tensors and rebuilds a
``DynamicCache`` (see /work/shared/notes/onnx.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

log = logging.getLogger(__name__)

OPSET = 23  # ONNX Attention + RMSNormalization + RotaryEmbedding ops: ~20% faster decoding on CPU than 18


class FlatCacheLM(nn.Module):
    """Wraps a causal LM so the cache goes in and out as flat tensors (ONNX has no Cache objects)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits[:, -1, :], *present)


def cache_names(num_layers: int, prefix: str) -> list[str]:
    """``[prefix_key_0, prefix_value_0, prefix_key_1, ...]``."""
    return [f"{prefix}_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]


def _example(config, batch: int = 2, seq: int = 5, past: int = 3):
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).unsqueeze(0).expand(batch, -1).contiguous()
    kv = [torch.randn(batch, heads, past, head_dim, generator=g) for _ in range(2 * config.num_hidden_layers)]
    return (ids, mask, pos, *kv)


def export_causal_lm(model: nn.Module, path: Path, opset: int = OPSET) -> Path:
    """Export ``model`` (eval mode, fp32) to one ONNX file at ``path``; returns the path.

    Weights above 2 GB would need external data; SmolLM2-135M is ~540 MB, so everything stays in one file.
    """
    model.eval()
    wrapper = FlatCacheLM(model).eval()
    n = model.config.num_hidden_layers
    b, s, t, p = (torch.export.Dim.DYNAMIC,) * 4
    past_shapes = tuple({0: b, 2: p} for _ in range(2 * n))
    dynamic = ({0: b, 1: s}, {0: b, 1: t}, {0: b, 1: s}, past_shapes)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            _example(model.config),
            input_names=["input_ids", "attention_mask", "position_ids", *cache_names(n, "past")],
            output_names=["logits", *cache_names(n, "present")],
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path))
    return Path(path)


def tiny_llama(seed: int = 0, vocab_size: int = 128, layers: int = 2) -> LlamaForCausalLM:
    """A randomly initialised Llama small enough for tests (export + generate in seconds)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def generator_config(model_config) -> dict:
    """What the runtime decoding loop needs to know about the graph (goes into the manifest's ``config``)."""
    c = model_config
    return {
        "num_layers": c.num_hidden_layers,
        "num_kv_heads": c.num_key_value_heads,
        "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "vocab_size": c.vocab_size,
    }
