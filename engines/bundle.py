"""A model bundle: a directory with manifest.json and the files it lists.

The manifest records labels, decision thresholds, preprocessing parameters,
the precision of the ONNX graphs, their inputs and outputs (names, dtypes,
shapes, dynamic axes), the student's config (to rebuild it in PyTorch from
student.safetensors), any TensorRT engines and the sha256 of every file.
Loading checks every hash first, so a corrupt, truncated or tampered bundle is
refused with the file's name instead of failing later with an obscure ONNX
Runtime error (or, worse, running).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from common.atomic import write_file
from common.errors import UserError
from engines.faces import FaceOptions
from engines.preprocess import Preprocessing

SCHEMA_VERSION = 2  # 2: precision, student weights + config, io dtypes, TensorRT plans
MANIFEST = "manifest.json"
# The model card's files in a bundle (engines.card reads them, trainer.card writes them).
CARD_JSON = "card.json"
CARD_MD = "card.md"


class BundleError(UserError, RuntimeError):
    """A bundle that cannot be used; the message names the file."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(kw_only=True)
class Manifest:
    """manifest.json as a record: the entries `trainer export` writes, in the order it writes
    them (None: absent, as in a bundle exported before the entry existed).  Any other entry
    (schema_version, files, TensorRT's `tensorrt`, ...) stays in `extra`, so that
    Manifest.from_dict(m).to_dict() == m."""

    labels: list[str]
    thresholds: list[float]
    preprocessing: dict
    faces: dict | None = None  # engines.faces.FaceOptions of the run
    text_dim: int | None = None
    precision: str  # of the ONNX graphs
    student_config: dict | None = None  # engines.student.StudentConfig, to rebuild it in PyTorch
    graphs: dict[str, str]  # key -> file in the bundle
    inputs: dict | None = None  # graph -> {name: {dtype, shape}}
    outputs: dict | None = None
    dynamic_axes: dict | None = None
    heads: list[str] | None = None
    modalities: list[str] | None = None  # what the student was trained to read
    backends: dict | None = None
    training: dict | None = None  # how training cut and split its corpus, and what it selected
    parity_max_abs_diff: dict | None = None
    calibration: dict | None = None  # the calibration's summary (or why there is none)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, manifest: dict) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in manifest.items() if k in known},
                   extra={k: v for k, v in manifest.items() if k not in known})

    def io(self, graph: str) -> tuple[dict, dict]:
        """(inputs, outputs) of `graph`, each {name: {dtype, shape}}, for the backends that must
        declare them (Triton, TensorRT); BundleError where the export recorded none."""
        inputs, outputs = (self.inputs or {}).get(graph), (self.outputs or {}).get(graph)
        if inputs is None or outputs is None:
            raise BundleError(f"the manifest records no inputs and outputs of {graph!r} (a bundle exported "
                              "before they were recorded): export the run again")
        return inputs, outputs

    def to_dict(self) -> dict:
        """The JSON object: the entries that are set, in field order, then `extra`'s."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}


def write_manifest(bundle: Path, manifest: dict | Manifest) -> Path:
    """Add the sha256 of every file in the bundle and write manifest.json."""
    if isinstance(manifest, Manifest):
        manifest = manifest.to_dict()
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = dict(manifest, schema_version=SCHEMA_VERSION)
    manifest["files"] = {p.relative_to(bundle).as_posix(): sha256(p) for p in files}
    return write_file(bundle / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def model_id(manifest: dict) -> str:
    """A hash of everything in `manifest` that decides what the bundle computes: graphs and
    weights (their sha256), labels, thresholds, preprocessing, faces and whatever else export
    records.  Adding test scores to the card or TensorRT plans keeps it; another export of
    another run changes it.  A `trainer evaluate` report records it, so a report is put only
    on the card of the bundle it scored."""
    # Left out: the model card (`trainer card` adds test scores to it) and the TensorRT
    # plans (engines.tensorrt_build builds them later from the same ONNX graphs).
    graphs = {k: v for k, v in manifest.get("graphs", {}).items() if not k.endswith("_plan")}
    plans = set(manifest.get("graphs", {}).values()) - set(graphs.values())
    backends = {k: v for k, v in manifest.get("backends", {}).items() if k != "tensorrt"}
    files = {k: v for k, v in manifest.get("files", {}).items() if k not in (CARD_JSON, CARD_MD, *plans)}
    model = dict(manifest, graphs=graphs, backends=backends, files=files)
    for key in ("schema_version", "tensorrt"):
        model.pop(key, None)
    return hashlib.sha256(json.dumps(model, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Bundle:
    path: Path
    manifest: dict  # manifest.json as read (what model_id and the service's fingerprint hash)

    @property
    def entries(self) -> Manifest:
        """The manifest's entries, typed (parsed from `manifest` on each read, so never stale)."""
        return Manifest.from_dict(self.manifest)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def thresholds(self) -> list[float]:
        return list(self.manifest["thresholds"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    @property
    def faces(self):
        """The engines.faces.FaceOptions the model was trained with ([faces] of its run): what
        `trainer evaluate BUNDLE` scores with, and what the pipeline runs by default."""
        if "faces" not in self.manifest:
            raise BundleError(f"{self.path / MANIFEST}: no 'faces' entry (export the run again)")
        known = {f.name for f in fields(FaceOptions)}  # a setting since removed is not one
        return FaceOptions(**{k: v for k, v in self.manifest["faces"].items() if k in known})

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    def has(self, key: str) -> bool:
        return key in self.manifest["graphs"]

    def file(self, key: str) -> Path:
        if not self.has(key):
            raise BundleError(f"{self.path / MANIFEST}: no {key!r} in graphs")
        return self.path / self.manifest["graphs"][key]

    @property
    def model_id(self) -> str:
        return model_id(self.manifest)

    @property
    def has_tensorrt_engines(self) -> bool:
        return self.has("student_plan") and self.has("text_encoder_plan")


def open_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle; raises BundleError naming the bad file."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing; is {path} a model bundle (trainer export)?")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: schema_version {manifest.get('schema_version')!r}, "
            f"this version reads {SCHEMA_VERSION} (export the run again with `trainer export`)"
        )
    for key in ("labels", "thresholds", "preprocessing", "precision", "graphs", "files"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: no {key!r} entry")
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: listed in the manifest but missing")
        if sha256(file) != expected:
            raise BundleError(f"{file}: sha256 does not match the manifest (corrupt or modified)")
    for key, name in manifest["graphs"].items():
        if name not in manifest["files"]:
            raise BundleError(f"{path / name}: graph {key!r} is not covered by a hash")
    return Bundle(path, manifest)
