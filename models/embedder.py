"""Item text embeddings with onnxruntime: ``tokenizers`` + the exported MiniLM graph (pooling and norm inside)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kairos.models.registry import HandleBacked, LoadedModel, ModelHandle
from kairos.models.session import SessionOptions

EMBEDDER_NAME = "embedder"


class OnnxEmbedder(HandleBacked):
    """``TextEmbedder``: texts -> L2-normalised float32 vectors (``dim`` = 384 for all-MiniLM-L6-v2).

    Texts are embedded in chunks of ``batch_size``, each padded to its longest text (cut at ``max_tokens``).
    """

    def __init__(self, handle: ModelHandle, batch_size: int = 32, max_tokens: int = 128):
        self.handle = handle
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._bind(handle.current)

    @classmethod
    def from_dir(cls, model_dir: str | Path, name: str = EMBEDDER_NAME, options: SessionOptions | None = None, **kw):
        return cls(ModelHandle(Path(model_dir), name, options, expect_kind="embedder"), **kw)

    def _bind(self, loaded: LoadedModel) -> None:
        from tokenizers import Tokenizer

        cfg = loaded.manifest.config
        tokenizer = Tokenizer.from_file(str(loaded.asset(cfg.get("tokenizer", "tokenizer.json"))))
        tokenizer.enable_truncation(self.max_tokens)
        tokenizer.enable_padding(pad_id=cfg.get("pad_token_id", 0), pad_token="[PAD]")
        self.tokenizer = tokenizer
        self.dim = int(loaded.manifest.outputs["sentence_embedding"].shape[-1])
        self._input_names = {i.name for i in loaded.session.get_inputs()}
        self._session = loaded.session

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, each row of unit length."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        chunks = [self._embed_chunk(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(chunks)

    def _embed_chunk(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
        }
        feeds = {k: v for k, v in feeds.items() if k in self._input_names}
        return self._session.run(["sentence_embedding"], feeds)[0]
