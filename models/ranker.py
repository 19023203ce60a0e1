"""The ONNX ranker at serving time: scores candidate rows built by ``kairos.engine.features``.

The model has two heads (see :data:`kairos.schemas.features.RANKER_OUTPUTS`): ``score`` ranks products,
``click_logit`` is the position-aware pCTR used for creatives. Inputs are checked against
:data:`kairos.schemas.features.RANKER_INPUTS` and the manifest's feature version at load.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kairos.models.batching import MicroBatcher
from kairos.models.registry import HandleBacked, LoadedModel, ManifestMismatch, ModelHandle, check_signature
from kairos.models.session import SessionOptions
from kairos.schemas.features import RANKER_FEATURE_VERSION, RANKER_INPUTS, RANKER_OUTPUTS
from kairos.schemas.manifest import TensorSpec

RANKER_NAME = "ranker"
#: Rows per onnxruntime run (see ``OnnxRanker.predict``).
MAX_ROWS_PER_RUN = 4096


def contract_problems(model: LoadedModel) -> list[str]:
    """Differences between a loaded ranker and the feature contract in ``kairos.schemas.features``."""
    want_in = {n: TensorSpec(dtype=d, shape=s) for n, (d, s) in RANKER_INPUTS.items()}
    want_out = {n: TensorSpec(dtype=d, shape=s) for n, (d, s) in RANKER_OUTPUTS.items()}
    problems = check_signature(model.manifest.inputs, want_in, "input")
    problems += check_signature(model.manifest.outputs, want_out, "output")
    if model.manifest.feature_version != RANKER_FEATURE_VERSION:
        problems.append(
            f"trained on feature version {model.manifest.feature_version}, engine computes {RANKER_FEATURE_VERSION}"
        )
    return problems


def as_ranker_inputs(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pick the ranker inputs from ``features`` with the contract's dtypes (a missing one is an error)."""
    missing = [n for n in RANKER_INPUTS if n not in features]
    if missing:
        raise KeyError(f"ranker inputs missing: {missing}")
    return {n: np.ascontiguousarray(features[n], dtype=d) for n, (d, _) in RANKER_INPUTS.items()}


class OnnxRanker(HandleBacked):
    """Ranker backed by an ONNX session from the model registry; satisfies ``Ranker`` and ``AsyncRanker``.

    Build it with :meth:`from_dir` (hot-reloadable via :meth:`refresh`). ``score`` returns the ranking logit,
    ``click_logit`` the pCTR logit (apply a sigmoid for a probability), ``predict`` both from one call.
    """

    def __init__(self, handle: ModelHandle, max_batch_rows: int = 1024, max_wait_ms: float = 2.0):
        self.handle = handle
        self._check(handle.current)
        self._batcher = MicroBatcher(self._score_rows, max_rows=max_batch_rows, max_wait_ms=max_wait_ms)

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, name: str = RANKER_NAME, options: SessionOptions | None = None, **kwargs
    ) -> OnnxRanker:
        """Load the current ranker version from ``model_dir``."""
        return cls(ModelHandle(Path(model_dir), name, options, expect_kind="ranker"), **kwargs)

    @staticmethod
    def _check(model: LoadedModel) -> None:
        problems = contract_problems(model)
        if problems:
            raise ManifestMismatch(f"{model.manifest.name}/{model.manifest.version}", problems)

    def predict(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Both heads for every row: ``{"score": ..., "click_logit": ...}`` (float32, shape (rows,)).

        At most ``MAX_ROWS_PER_RUN`` rows go through one session run: onnxruntime's memory arena keeps the peak
        of any run for the life of the session, so one huge call (a worker catching up on a backlog ranks a
        2,000-event batch at once) would pin hundreds of MB; a few thousand rows per run already amortise the
        call overhead."""
        inputs = as_ranker_inputs(features)
        rows = len(inputs["item_id"])
        if rows == 0:
            return {n: np.empty(0, np.float32) for n in RANKER_OUTPUTS}
        session = self.handle.current.session
        names = list(RANKER_OUTPUTS)
        if rows <= MAX_ROWS_PER_RUN:
            return dict(zip(names, session.run(names, inputs)))
        parts = [
            session.run(names, {n: a[start : start + MAX_ROWS_PER_RUN] for n, a in inputs.items()})
            for start in range(0, rows, MAX_ROWS_PER_RUN)
        ]
        return {name: np.concatenate([part[k] for part in parts]) for k, name in enumerate(names)}

    def score(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Ranking logit per row (higher is better)."""
        return self.predict(features)["score"]

    def click_logit(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Position-aware click logit per row; ``1 / (1 + exp(-x))`` is the pCTR."""
        return self.predict(features)["click_logit"]

    def _score_rows(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        out = self.predict(inputs)
        return np.stack([out["score"], out["click_logit"]], axis=1)

    async def predict_async(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Like :meth:`predict`, micro-batched with concurrent callers."""
        rows = await self._batcher.submit(as_ranker_inputs(features))
        if len(rows) == 0:
            return {n: np.empty(0, np.float32) for n in RANKER_OUTPUTS}
        return {"score": rows[:, 0], "click_logit": rows[:, 1]}

    async def score_async(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Like :meth:`score`, micro-batched with concurrent callers."""
        return (await self.predict_async(features))["score"]

    def refresh(self) -> bool:
        """Hot-reload a newer version if the model directory has one that satisfies the contract."""
        previous = self.handle.current
        if not self.handle.refresh():
            return False
        try:
            self._check(self.handle.current)
        except ManifestMismatch:
            self.handle.current = previous  # keep serving the old, valid version
            raise
        return True

    async def close(self) -> None:
        await self._batcher.close()
