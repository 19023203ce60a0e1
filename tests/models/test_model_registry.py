from __future__ import annotations

import json

import numpy as np
import pytest

from kairos.models.ranker import OnnxRanker
from kairos.models.registry import ManifestMismatch, ModelHandle, ModelNotFound, list_versions, load_model
from kairos.schemas.features import RANKER_FEATURE_VERSION
from kairos.schemas.manifest import ModelManifest

from models_factories import publish_tiny_ranker, ranker_rows, tiny_ranker_onnx


def _edit_manifest(folder, **changes):
    data = json.loads((folder / "manifest.json").read_text())
    data.update(changes)
    (folder / "manifest.json").write_text(json.dumps(data))


def test_publish_and_load(model_dir):
    m = publish_tiny_ranker(model_dir, "1", metrics={"auc": 0.7}, training_data=["synthetic"])
    loaded = load_model(model_dir, "ranker")
    assert loaded.manifest == m
    assert m.opset == 18 and m.inputs["dense"].shape[1] == 16
    assert loaded.provider == "CPUExecutionProvider"


def test_missing_model_names_the_build_command(model_dir):
    with pytest.raises(ModelNotFound, match="kairos models build"):
        load_model(model_dir, "ranker")


def test_sha256_mismatch_is_reported(model_dir):
    publish_tiny_ranker(model_dir, "1")
    tiny_ranker_onnx(model_dir / "ranker" / "1" / "model.onnx", weight=3.0)  # file swapped after publishing
    with pytest.raises(ManifestMismatch, match="sha256 of model.onnx"):
        load_model(model_dir, "ranker")


def test_signature_mismatch_lists_every_problem(model_dir):
    m = publish_tiny_ranker(model_dir, "1")
    inputs = m.model_dump(mode="json")["inputs"]
    inputs["dense"]["shape"] = ["B", 12]
    inputs["position"]["dtype"] = "int32"
    inputs["user_id"] = {"dtype": "int64", "shape": ["B"]}
    _edit_manifest(model_dir / "ranker" / "1", inputs=inputs)
    with pytest.raises(ManifestMismatch) as err:
        load_model(model_dir, "ranker")
    problems = err.value.problems
    assert "input 'dense': axis 1 is 16 in the model, 12 in the manifest" in problems
    assert "input 'position': dtype int64 in the model, int32 in the manifest" in problems
    assert "input 'user_id' is in the manifest but not in the model" in problems
    assert len(problems) == 3


def test_ranker_refuses_other_feature_version(model_dir):
    publish_tiny_ranker(model_dir, "1", feature_version=RANKER_FEATURE_VERSION + 1)
    with pytest.raises(ManifestMismatch, match="feature version"):
        OnnxRanker.from_dir(model_dir)


def test_hot_reload_swaps_version_without_restart(model_dir):
    publish_tiny_ranker(model_dir, "1", weight=1.0)
    ranker = OnnxRanker.from_dir(model_dir)
    rows = ranker_rows(5)
    before = ranker.score(rows)
    assert ranker.refresh() is False
    publish_tiny_ranker(model_dir, "2", weight=2.0)
    assert ranker.refresh() is True
    assert ranker.version == "2"
    np.testing.assert_allclose(ranker.score(rows), 2 * before, rtol=1e-6)


def test_broken_new_version_keeps_old_one_serving(model_dir):
    publish_tiny_ranker(model_dir, "1")
    handle = ModelHandle(model_dir, "ranker")
    publish_tiny_ranker(model_dir, "2")
    _edit_manifest(model_dir / "ranker" / "2", sha256="0" * 64)
    assert handle.refresh() is False
    assert handle.version == "1" and handle.failed_reloads == 1


def test_versions_sort_numerically(model_dir):
    for v in ("9", "10", "2"):
        publish_tiny_ranker(model_dir, v, make_current=False)
    assert list_versions(model_dir, "ranker") == ["2", "9", "10"]
    assert load_model(model_dir, "ranker").manifest.version == "10"


def test_manifest_round_trip(model_dir):
    m = publish_tiny_ranker(model_dir, "1")
    assert ModelManifest.read(model_dir / "ranker" / "1") == m
