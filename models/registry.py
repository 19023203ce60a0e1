"""Load models by name and version from a model directory, verify them, and hot-reload new versions.

Layout (see :mod:`kairos.schemas.manifest`)::

    <model_dir>/<name>/<version>/manifest.json, model.onnx, ...
    <model_dir>/<name>/CURRENT     optional pointer to the version to serve; else the newest version folder

A load checks, and refuses with a :class:`ManifestMismatch` naming every difference:
the ONNX file's sha256, every input/output name, dtype and static dimension against the session, and the assets'
sha256. :class:`ModelHandle` keeps the served version and swaps in a new one without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from kairos.models.session import SessionOptions, create_session
from kairos.schemas.manifest import CURRENT_FILE, MANIFEST_FILE, ModelManifest, TensorSpec, file_sha256

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


class ModelError(RuntimeError):
    """Base class for model loading errors."""


class ModelNotFound(ModelError):
    """No such model name or version in the model directory."""


class ManifestMismatch(ModelError):
    """The manifest disagrees with the file or the session; ``problems`` lists every difference."""

    def __init__(self, where: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{where}: manifest does not match the model:\n  - " + "\n  - ".join(problems))


def default_model_dir() -> Path:
    """``$KAIROS_MODEL_DIR`` or ``./var/models``."""
    return Path(os.environ.get("KAIROS_MODEL_DIR", "var/models"))


def _version_key(version: str) -> tuple:
    # Numeric-aware ordering so that "10" sorts after "9" and "20260101-1200" orders by time.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.replace("-", ".").split("."))


def list_versions(model_dir: Path, name: str) -> list[str]:
    """Versions of ``name`` that have a manifest, oldest first."""
    folder = Path(model_dir) / name
    if not folder.is_dir():
        return []
    found = [p.name for p in folder.iterdir() if (p / MANIFEST_FILE).is_file()]
    return sorted(found, key=_version_key)


def resolve_version(model_dir: Path, name: str, version: str | None = None) -> str:
    """The version to load: the one asked for, else ``CURRENT``, else the newest."""
    versions = list_versions(model_dir, name)
    if version is None:
        pointer = Path(model_dir) / name / CURRENT_FILE
        version = pointer.read_text().strip() if pointer.is_file() else (versions[-1] if versions else None)
    if version is None or version not in versions:
        raise ModelNotFound(
            f"model {name!r} version {version!r} not found in {model_dir} (have: {versions or 'none'}); "
            "build it with `kairos models build`"
        )
    return version


def check_signature(actual: dict[str, TensorSpec], expected: dict[str, TensorSpec], kind: str) -> list[str]:
    """Differences between two input (or output) signatures; dynamic axes (strings) match any dynamic axis."""
    problems = [f"{kind} {n!r} is in the manifest but not in the model" for n in expected if n not in actual]
    problems += [f"{kind} {n!r} is in the model but not in the manifest" for n in actual if n not in expected]
    for n in expected.keys() & actual.keys():
        want, got = expected[n], actual[n]
        if want.dtype != got.dtype:
            problems.append(f"{kind} {n!r}: dtype {got.dtype} in the model, {want.dtype} in the manifest")
        if len(want.shape) != len(got.shape):
            problems.append(f"{kind} {n!r}: rank {len(got.shape)} in the model, {len(want.shape)} in the manifest")
            continue
        for axis, (w, g) in enumerate(zip(want.shape, got.shape)):
            if isinstance(w, int) and w != g:
                problems.append(f"{kind} {n!r}: axis {axis} is {g} in the model, {w} in the manifest")
    return problems


def session_signature(session: ort.InferenceSession) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    """Inputs and outputs of a session as :class:`TensorSpec` (unknown dims become strings)."""

    def spec(arg) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else str(d) for d in arg.shape)
        return TensorSpec(dtype=_ORT_TYPES.get(arg.type, arg.type), shape=shape)

    return (
        {a.name: spec(a) for a in session.get_inputs()},
        {a.name: spec(a) for a in session.get_outputs()},
    )


@dataclass(frozen=True)
class LoadedModel:
    """A verified session with its manifest and folder."""

    manifest: ModelManifest
    session: ort.InferenceSession
    folder: Path

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def asset(self, name: str) -> Path:
        return self.folder / name


def load_model(
    model_dir: Path,
    name: str,
    version: str | None = None,
    options: SessionOptions | None = None,
    expect_kind: str | None = None,
) -> LoadedModel:
    """Load and verify one model version (see the module docstring for what is checked)."""
    version = resolve_version(model_dir, name, version)
    folder = Path(model_dir) / name / version
    manifest = ModelManifest.read(folder)
    where = f"{name}/{version}"
    problems = _file_problems(folder, manifest)
    if expect_kind and manifest.kind != expect_kind:
        problems.append(f"kind is {manifest.kind!r}, expected {expect_kind!r}")
    if manifest.name != name or manifest.version != version:
        problems.append(f"manifest names {manifest.name}/{manifest.version} but lives in {where}")
    if problems:
        raise ManifestMismatch(where, problems)
    session = create_session(folder / manifest.file, options)
    inputs, outputs = session_signature(session)
    problems = check_signature(inputs, manifest.inputs, "input") + check_signature(outputs, manifest.outputs, "output")
    if problems:
        raise ManifestMismatch(where, problems)
    log.info("loaded model %s (sha256 %s…) on %s", where, manifest.sha256[:12], session.get_providers()[0])
    return LoadedModel(manifest=manifest, session=session, folder=folder)


def _file_problems(folder: Path, manifest: ModelManifest) -> list[str]:
    problems = []
    for file, digest in {manifest.file: manifest.sha256, **manifest.assets}.items():
        path = folder / file
        if not path.is_file():
            problems.append(f"file {file} is missing")
        elif (actual := file_sha256(path)) != digest:
            problems.append(f"sha256 of {file} is {actual}, manifest says {digest}")
    return problems


class ModelHandle:
    """The currently served version of one model; :meth:`refresh` swaps in a newer one without a restart.

    A failed reload keeps the old version serving (and is logged), so a half-copied model never takes a worker
    down. Readers take ``handle.current`` once per call; the swap is a single reference assignment.
    """

    def __init__(self, model_dir: Path, name: str, options: SessionOptions | None = None, expect_kind: str | None = None):
        self.model_dir, self.name, self.options, self.expect_kind = Path(model_dir), name, options, expect_kind
        self._lock = threading.Lock()
        self.current: LoadedModel = load_model(self.model_dir, name, None, options, expect_kind)
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def version(self) -> str:
        return self.current.manifest.version

    def refresh(self) -> bool:
        """Load the version the directory now points at, if it differs; True when a new version was swapped in."""
        with self._lock:
            try:
                wanted = resolve_version(self.model_dir, self.name)
                if wanted == self.version:
                    return False
                loaded = load_model(self.model_dir, self.name, wanted, self.options, self.expect_kind)
            except ModelError as exc:
                self.failed_reloads += 1
                log.warning("reload of %s failed, keeping %s: %s", self.name, self.version, exc)
                return False
            log.info("model %s: %s -> %s", self.name, self.version, wanted)
            self.current = loaded
            self.reloads += 1
            return True

    async def watch(self, interval_s: float = 30.0) -> None:
        """Poll the model directory forever (run as a background task) and hot-reload new versions."""
        import asyncio

        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.refresh)


def publish_model(
    model_dir: Path,
    name: str,
    version: str,
    kind: str,
    onnx_file: Path,
    *,
    assets: list[Path] = (),
    make_current: bool = True,
    **fields,
) -> ModelManifest:
    """Copy an ONNX file (and assets) into ``<model_dir>/<name>/<version>/`` with a manifest read off the model.

    The folder is written under a temporary name and renamed into place, and ``CURRENT`` is replaced atomically,
    so a worker polling for new versions never sees half a model. ``fields`` go into the manifest
    (``opset``, ``feature_version``, ``training_data``, ``metrics``, ``config``).
    """
    import datetime
    import shutil

    final = Path(model_dir) / name / version
    tmp = final.with_name(f".{version}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(onnx_file, tmp / "model.onnx")
    if Path(f"{onnx_file}.data").exists():  # external weights saved beside the graph
        shutil.copyfile(f"{onnx_file}.data", tmp / f"{Path(onnx_file).name}.data")
    for asset in assets:
        shutil.copyfile(asset, tmp / Path(asset).name)
    inputs, outputs = session_signature(create_session(tmp / "model.onnx", SessionOptions(device="cpu")))
    fields.setdefault("opset", _opset(tmp / "model.onnx"))
    fields.setdefault("created_at", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    manifest = ModelManifest(
        name=name, version=version, kind=kind, file="model.onnx", sha256=file_sha256(tmp / "model.onnx"),
        inputs=inputs, outputs=outputs, assets={Path(a).name: file_sha256(tmp / Path(a).name) for a in assets},
        **fields,
    )
    manifest.write(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if make_current:
        pointer = final.parent / CURRENT_FILE
        pointer.with_suffix(".tmp").write_text(version + "\n")
        pointer.with_suffix(".tmp").replace(pointer)
    return manifest


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class HandleBacked:
    """A runtime model bound to a :class:`ModelHandle`: its name, version and provider come from the handle, and
    :meth:`refresh` rebinds it (``_bind``) when the model directory has a newer version."""

    handle: ModelHandle

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def version(self) -> str:
        return self.handle.version

    @property
    def provider(self) -> str:
        return self.handle.current.provider

    def refresh(self) -> bool:
        """Hot-reload a newer version from the model directory."""
        if self.handle.refresh():
            self._bind(self.handle.current)
            return True
        return False

    def _bind(self, loaded: LoadedModel) -> None:
        """Take what the model needs from a newly loaded version (subclasses)."""
