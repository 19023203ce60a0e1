"""A seeded NumPy generator's position as JSON, so a checkpointed policy continues its random stream after a
restore instead of repeating the draws it made since its seed.

>>> import numpy as np, orjson
>>> rng = np.random.default_rng(7); _ = rng.random(3)
>>> saved = orjson.loads(orjson.dumps(generator_state(rng)))
>>> twin = np.random.default_rng(0); restore_generator(twin, saved)
>>> twin.random() == rng.random()
True
"""

from __future__ import annotations

import numpy as np


def generator_state(rng: np.random.Generator) -> dict:
    state = rng.bit_generator.state
    words = state["state"]
    # PCG64's 128-bit words do not fit a JSON number (orjson stops at 64 bits): kept as decimal strings.
    return {
        "kind": state["bit_generator"], "state": str(words["state"]), "inc": str(words["inc"]),
        "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"]),
    }  # fmt: skip


def restore_generator(rng: np.random.Generator, data: dict) -> None:
    """Move ``rng`` to the position saved by :func:`generator_state` (same bit generator kind required)."""
    kind = rng.bit_generator.state["bit_generator"]
    if data["kind"] != kind:
        raise ValueError(f"saved {data['kind']} state cannot restore a {kind} generator")
    rng.bit_generator.state = {
        "bit_generator": kind, "state": {"state": int(data["state"]), "inc": int(data["inc"])},
        "has_uint32": data["has_uint32"], "uinteger": data["uinteger"],
    }  # fmt: skip
