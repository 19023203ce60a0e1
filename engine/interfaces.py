"""The small interfaces the engine ranks, generates and embeds through.

Concrete classes live elsewhere (``kairos.engine.ranking`` for the pure-Python rankers, ``kairos.models`` for the
ONNX-backed ones) and satisfy these protocols by shape; the engine never imports onnxruntime.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Ranker(Protocol):
    """Scores candidate items for one user; higher is better.

    ``features`` is the ranker input dict described by ``kairos.schemas.features.RANKER_INPUTS``: one row per
    candidate. Returns one float per row (a logit or any monotone score).
    """

    name: str
    version: str

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray: ...


@runtime_checkable
class AsyncRanker(Protocol):
    """A ranker whose calls may be micro-batched with other concurrent callers (see ``kairos.models.batching``)."""

    name: str
    version: str

    async def score_async(self, features: Mapping[str, np.ndarray]) -> np.ndarray: ...


@runtime_checkable
class TextGenerator(Protocol):
    """Generates text for a batch of prompts (chat-formatted by the implementation)."""

    name: str
    version: str

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64, sample: bool = False,
                 cancel: threading.Event | None = None) -> list[str]:
        """``sample``: decode with sampling instead of the implementation's default (a retry of a blocked text
        must not repeat it word for word). ``cancel``: once set, the call gives up soon and raises (its results
        would not be used: the process is stopping)."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    """Embeds texts into L2-normalised float32 vectors of a fixed dimension."""

    name: str
    version: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...
