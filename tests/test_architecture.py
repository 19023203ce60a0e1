"""The dependency arrows of STYLE.md, enforced: a wrong import fails here, not in a code review.

    agents -> engine -> schemas          onnx_export -> models -> schemas
    agents -> models                      onnx_export -> engine (pure logic, for train/serve feature parity)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("schemas", "engine", "models", "agents", "onnx_export")
ALLOWED = {
    "schemas": set(),
    "engine": {"schemas"},
    "models": {"schemas", "engine"},  # engine: only its interfaces (protocols) and pure helpers
    "agents": {"schemas", "engine", "models", "onnx_export"},  # onnx_export: only the CLI's lazy command import
    "onnx_export": {"schemas", "models", "engine"},
}
FORBIDDEN_THIRD_PARTY = {
    "schemas": {"faust", "aiokafka", "redis", "onnxruntime", "torch", "confluent_kafka"},
    "engine": {"faust", "aiokafka", "redis", "onnxruntime", "torch", "confluent_kafka", "transformers"},
    "models": {"faust", "aiokafka", "redis", "torch", "transformers"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_arrows(package):
    wrong = []
    for path in _modules(package):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "kairos" and len(parts) > 1 and parts[1] in PACKAGES:
                target = parts[1]
                if target != package and target not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
            elif parts[0] in FORBIDDEN_THIRD_PARTY.get(package, ()):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_engine_importable_without_onnxruntime_or_kafka():
    """The domain must load on its own: run in a subprocess with those modules blocked."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'onnxruntime','aiokafka','faust','redis','torch'}: raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import kairos.engine.recommender, kairos.engine.partition, kairos.schemas.codec\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
