"""The tuned model on disk: a sentence-transformers folder (the base's layout, tokenizer and
module configs; the trained weights as safetensors) and ``instructor-search.json``, the record
of how it was made.

The folder is written beside its destination under a temporary name and renamed into place
(an existing one only with ``overwrite``), so a crash never leaves half a model there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelError

if TYPE_CHECKING:
    from ..encoder.checkpoints import Checkpoint
    from ..encoder.instructor import Instructor

#: The record file in the model folder's root.
RECORD_FILE = "instructor-search.json"
#: Weight files of the base that the trained ones replace (or that no longer match them).
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
_NOT_COPIED = ("*.onnx", "onnx", "openvino", "*.h5", "*.msgpack", "*.ot", "*.gguf", RECORD_FILE)


def check_trainable(checkpoint: Checkpoint) -> None:
    """A base can be trained when its folder holds torch weights (not only an ONNX export)."""
    if not any((checkpoint.folder / name).is_file() for name in _WEIGHTS[:2]):
        found = sorted(p.name for p in checkpoint.folder.iterdir())[:8]
        raise ModelError(
            f"{checkpoint.folder} cannot be trained: it has no torch weights (model.safetensors "
            f"or pytorch_model.bin), only {found}. An ONNX-only folder serves inference; train "
            "its original checkpoint instead."
        )


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` unless ``overwrite`` (then it is replaced only at the end)."""
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; choose another --out")


def staging_folder(out: Path) -> Path:
    """Where the folder is written before it is renamed to ``out`` (same file system)."""
    return out.parent / f".{out.name}.partial-{os.getpid()}"


def save_model(model: Instructor, base: Checkpoint, folder: Path) -> None:
    """Write ``model`` (trained from ``base``) as a sentence-transformers folder at ``folder``."""
    from safetensors.torch import save_file

    if folder.exists():
        shutil.rmtree(folder)
    import transformers

    shutil.copytree(base.folder, folder, ignore=shutil.ignore_patterns(*_WEIGHTS, *_NOT_COPIED))
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bar
    try:
        model.encoder.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    dense_modules = [m for m in base.modules if m.kind == "dense"]
    for module, dense in zip(dense_modules, model.head.dense):
        target = folder / module.folder.relative_to(base.folder)
        for stale in _WEIGHTS:
            (target / stale).unlink(missing_ok=True)
        linear = dense[0]
        state = {"linear.weight": linear.weight.detach().cpu().contiguous()}
        if linear.bias is not None:
            state["linear.bias"] = linear.bias.detach().cpu().contiguous()
        save_file(state, str(target / "model.safetensors"))


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """``instructor-search.json`` in ``folder``."""
    text = json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n"
    (folder / RECORD_FILE).write_text(text, encoding="utf-8")


def read_record(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record of a tuned model folder, or ``None`` when it has none."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def move_into_place(staged: Path, out: Path, overwrite: bool) -> None:
    """Rename ``staged`` to ``out``; an existing ``out`` (with ``overwrite``) is removed after."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.exists():
        if not overwrite:
            raise InputError(f"{out} exists: pass --overwrite to replace it")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(staged, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
