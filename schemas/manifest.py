"""The model manifest: the record written beside every exported ONNX model.

A model directory holds one folder per model name and version::

    <model_dir>/<name>/<version>/manifest.json
    <model_dir>/<name>/<version>/model.onnx        (plus tokenizer.json etc. for text models)
    <model_dir>/<name>/CURRENT                     (optional: the version to serve; else the newest)

``kairos.models.registry`` loads a model through its manifest and refuses it when the manifest and the
session (or the file's sha256, or the feature version) disagree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"


class TensorSpec(BaseModel):
    """One ONNX input or output: numpy dtype name and shape (a string is a dynamic axis such as ``"B"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: str
    shape: tuple[str | int, ...]


class ModelManifest(BaseModel):
    """What a served model is, what it was trained on and how good it was.

    >>> m = ModelManifest(name="ranker", version="1", kind="ranker", file="model.onnx", sha256="0" * 64,
    ...                   opset=18, inputs={"x": TensorSpec(dtype="float32", shape=("B", 4))},
    ...                   outputs={"y": TensorSpec(dtype="float32", shape=("B",))})
    >>> ModelManifest.model_validate_json(m.model_dump_json()) == m
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    kind: str  # "ranker" | "embedder" | "generator"
    file: str  # ONNX file name inside the version folder
    sha256: str
    opset: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    feature_version: int | None = None  # RANKER_FEATURE_VERSION the ranker was trained on
    training_data: list[str] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: str = ""
    # Other files the runtime needs (tokenizer.json, ...) -> sha256.
    assets: dict[str, str] = Field(default_factory=dict)
    # Kind-specific settings, e.g. a generator's layer count, kv heads, eos ids, chat template.
    config: dict[str, Any] = Field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        """Write ``manifest.json`` into ``folder`` and return its path."""
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> ModelManifest:
        """Read ``manifest.json`` from a version folder."""
        return cls.model_validate_json((Path(folder) / MANIFEST_FILE).read_text())


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
