"""Torch vs onnxruntime parity over several batch sizes, listing every mismatching element."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
import torch


@dataclass(frozen=True)
class Mismatch:
    batch: int
    output: str
    index: tuple[int, ...]
    torch_value: float
    onnx_value: float

    def __str__(self) -> str:
        diff = abs(self.torch_value - self.onnx_value)
        return f"batch {self.batch} {self.output}{list(self.index)}: torch {self.torch_value:.7g} onnx {self.onnx_value:.7g} (|diff| {diff:.3g})"


@dataclass
class ParityReport:
    atol: float
    max_abs_diff: dict[int, float] = field(default_factory=dict)  # batch size -> worst diff over outputs
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        head = f"parity atol={self.atol:g}: " + ", ".join(f"b{b} max|diff|={d:.2e}" for b, d in self.max_abs_diff.items())
        if self.ok:
            return head + " -- OK"
        return head + f" -- {len(self.mismatches)} mismatches:\n" + "\n".join(f"  {m}" for m in self.mismatches)


def check_parity(
    torch_model: torch.nn.Module,
    session: ort.InferenceSession,
    make_inputs: Callable[[int], dict[str, torch.Tensor]],
    batch_sizes: Sequence[int] = (1, 7, 64, 513),
    atol: float = 1e-4,
) -> ParityReport:
    """Run both on the same inputs for each batch size and record every element further apart than ``atol``."""
    report = ParityReport(atol=atol)
    names = [o.name for o in session.get_outputs()]
    torch_model.eval()
    for batch in batch_sizes:
        inputs = make_inputs(batch)
        with torch.no_grad():
            expected = torch_model(**inputs)
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        got = session.run(names, {k: v.numpy() for k, v in inputs.items()})
        worst = 0.0
        for name, want, have in zip(names, expected, got):
            want = want.numpy()
            diff = np.abs(want - have)
            worst = max(worst, float(diff.max(initial=0.0)))
            for idx in zip(*np.nonzero(diff > atol)):
                idx = tuple(int(i) for i in idx)
                report.mismatches.append(Mismatch(batch, name, idx, float(want[idx]), float(have[idx])))
        report.max_abs_diff[batch] = worst
    return report
