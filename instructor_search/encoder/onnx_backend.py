"""The ONNX Runtime backend: the transformer encoder exported once, optimised, checked, then run.

Only the encoder is exported (``input_ids``, ``attention_mask`` → ``last_hidden_state``);
pooling with instruction tokens excluded, Dense and Normalize stay in
:mod:`instructor_search.encoder.instructor`, shared with the torch path. One export per model
fingerprint lives in a visible cache folder::

    <cache root>/<fingerprint[:16]>/
        model.onnx      the optimised encoder (``model.onnx.data`` beside it for large models)
        manifest.json   what was exported, how, and with which versions
        gate.json       the fidelity gate's verdict for exactly these files
        gate-bf16.json  the verdict on running this model in bf16 (:mod:`.precision`)

The cache root is ``onnx_cache`` when given, else ``$INSTRUCTOR_SEARCH_CACHE/onnx``, else
``$XDG_CACHE_HOME/instructor-search/onnx`` (``~/.cache/instructor-search/onnx``).

**Fidelity gate** (:mod:`.fidelity`). An export is used only after its embeddings of a
calibration set of real text were compared with the torch fp32 path's: the minimum cosine
must reach :data:`FP32_MIN_COSINE`. Otherwise the torch path runs and the reason is logged. The
verdict is cached beside the export and checked again when the files, onnxruntime or the
calibration set change. ``backend="auto"`` on an exact ``Instructor`` (the default
``precision="fp32"``) also needs the export's largest absolute difference from torch fp32 to stay
within :data:`~instructor_search.encoder.fidelity.EXACT_ATOL` (measured on the tiny T5 and
MiniLM: ~2e-7 at every batch size), else torch runs.

**Exporters.** BERT-family encoders use the legacy TorchScript exporter with eager attention,
so that onnxruntime's transformer optimizer fuses attention (with SDPA nothing fuses). T5
encoders use the ``dynamo=True`` exporter with dynamic batch and sequence: the legacy one bakes
T5's relative-position bias for the traced length, which is wrong at every other length.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, ModelError
from . import fidelity

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
#: Minimum cosine between the fp32 export's and the torch path's embeddings of the calibration set.
FP32_MIN_COSINE = 0.9999
#: Environment variable naming the root of instructor-search's caches (``<it>/onnx`` for exports).
CACHE_ENV = "INSTRUCTOR_SEARCH_CACHE"
#: Bumped whenever the export recipe changes, so older exports are made again.
RECIPE = 1

_MODEL_FILE = "model.onnx"
_T5_TYPES = ("t5", "mt5", "umt5")
# config.model_type → the model_type of onnxruntime.transformers.optimizer (others: ORT only).
_OPTIMIZER_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "t5": "t5"}
# Loggers of torch.onnx, onnxscript and onnxruntime.transformers that log every pass.
_CHATTY_LOGGERS = (
    "torch.onnx",
    "onnxscript",
    "onnx_ir",
    "onnx_model",
    "onnx_model_bert",
    "onnx_model_t5",
    "fusion_base",
    "fusion_utils",
    "fusion_options",
)
_EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf's limit is 2 GiB: larger weights go beside it


class OnnxUnavailable(ModelError):
    """The ONNX backend cannot serve this model; the message says why (torch is used instead)."""


class OnnxInexact(OnnxUnavailable):
    """The export passes the fidelity gate but is not within the exact contract's tolerance."""


class OnnxEncoder:
    """An onnxruntime session that stands in for the torch encoder: ids and mask → hidden states."""

    def __init__(self, session: Any, folder: Path) -> None:
        self.session = session
        self.folder = folder

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import torch

        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        return torch.from_numpy(self.session.run(["last_hidden_state"], feeds)[0])

    def __repr__(self) -> str:
        return f"OnnxEncoder({str(self.folder)!r})"


def select(
    requested: str,
    encoder: Any,
    *,
    fingerprint: str,
    device: str,
    cache: str | os.PathLike[str] | None,
    num_threads: int,
    reference: Callable[[], np.ndarray],
    embed: Callable[[OnnxEncoder], np.ndarray],
    exact: bool = False,
) -> OnnxEncoder | None:
    """The ONNX encoder to use for ``requested`` (``auto``/``torch``/``onnx``), or None for torch.

    ``reference()`` is the calibration pairs embedded by the torch fp32 path and ``embed(runner)``
    the same through the caller's pipeline with ``runner`` as the encoder. ``exact``: ``auto``
    takes the export only within :data:`~.fidelity.EXACT_ATOL` of torch fp32. Falling back to
    torch logs one line; an explicit ``onnx`` without onnxruntime installed, or off the CPU,
    raises instead.
    """
    if requested not in BACKENDS:
        raise InputError(f"backend {requested!r} must be one of {list(BACKENDS)}")
    if requested == "torch":
        return None
    try:
        if device != "cpu":
            raise OnnxUnavailable(f"the ONNX backend runs on CPU only, and the device is {device}")
        missing = missing_dependencies(encoder.config.model_type)
        if missing:
            raise OnnxUnavailable(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
                f"(pip install {' '.join(missing)})"
            )
    except OnnxUnavailable as error:
        if requested == "onnx":
            raise OnnxUnavailable(f"backend='onnx' is not available: {error}") from None
        logger.info("Using the torch backend: %s", error)
        return None
    try:
        return load(
            encoder,
            fingerprint=fingerprint,
            cache=cache,
            num_threads=num_threads,
            reference=reference,
            embed=embed,
            exact=exact and requested == "auto",
        )
    except OnnxInexact as error:
        logger.info("Using the torch backend: %s", error)
        return None
    except OnnxUnavailable as error:
        logger.warning("Using the torch backend: %s", error)
        return None


def missing_dependencies(model_type: str = "") -> list[str]:
    """The packages the ONNX backend needs for ``model_type`` that are not importable."""
    needed = ["onnxruntime", "onnx"] + (["onnxscript"] if model_type in _T5_TYPES else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def cache_root(cache: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds one export folder per model fingerprint."""
    if cache is not None:
        return Path(cache).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "instructor-search" / "onnx"


def export_folder(fingerprint: str, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where the export of the model with ``fingerprint`` lives."""
    return cache_root(cache) / fingerprint[:16]


def load(
    encoder: Any,
    *,
    fingerprint: str,
    cache: str | os.PathLike[str] | None,
    num_threads: int,
    reference: Callable[[], np.ndarray],
    embed: Callable[[OnnxEncoder], np.ndarray],
    exact: bool = False,
) -> OnnxEncoder:
    """The gated ONNX encoder: exported (once), opened, and checked (once) against torch
    (``exact``: also within :data:`~.fidelity.EXACT_ATOL` of it)."""
    folder = export_folder(fingerprint, cache)
    if not export_is_current(folder, fingerprint):
        _export(encoder, folder, fingerprint)
    try:
        candidate = OnnxEncoder(session(folder / _MODEL_FILE, num_threads), folder)
    except Exception as error:  # onnxruntime raises its own exception types
        raise OnnxUnavailable(
            f"onnxruntime could not open {folder / _MODEL_FILE} ({error}); delete {folder} to "
            f"export the model again"
        ) from error
    verdict = fidelity.check(
        folder / "gate.json",
        key=gate_key(folder),
        threshold=FP32_MIN_COSINE,
        reference=reference,
        candidate=lambda: embed(candidate),
        label=str(folder),
    )
    if not verdict["passed"]:
        raise OnnxUnavailable(
            f"the ONNX export in {folder} failed the fidelity gate: minimum cosine "
            f"{verdict['min_cosine']:.6f} < {verdict['threshold']} against torch fp32 on "
            f"{verdict['texts']} calibration texts"
        )
    if exact and verdict["max_abs_diff"] > fidelity.EXACT_ATOL:
        raise OnnxInexact(
            f"the ONNX export in {folder} differs from torch fp32 by up to "
            f"{verdict['max_abs_diff']:.1e} (> {fidelity.EXACT_ATOL}), and precision='fp32' "
            "asks for the reference's vectors; precision='auto' takes the export"
        )
    return candidate


# -- export -----------------------------------------------------------------------------------


def gate_verdict(folder: Path) -> dict[str, Any]:
    """The cached verdict on the export in ``folder`` if it is still about these files ({} if not)."""
    verdict = fidelity.read_json(folder / "gate.json")
    current = verdict.get("key") == gate_key(folder) and verdict.get("threshold") == FP32_MIN_COSINE
    return verdict if current else {}


def export_is_current(folder: Path, fingerprint: str) -> bool:
    """Whether ``folder`` holds this recipe's export of the model with ``fingerprint``."""
    manifest = fidelity.read_json(folder / "manifest.json")
    return (
        manifest.get("recipe") == RECIPE
        and manifest.get("fingerprint") == fingerprint
        and (folder / _MODEL_FILE).is_file()
    )


def _export(encoder: Any, folder: Path, fingerprint: str) -> None:
    model_type = encoder.config.model_type
    folder.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Exporting the %s encoder to ONNX in %s (once per model)", model_type, folder)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    started = time.perf_counter()
    try:
        raw = staging / "raw" / _MODEL_FILE
        raw.parent.mkdir()
        exporter = "dynamo" if model_type in _T5_TYPES else "torchscript"
        with quiet():
            _torch_export(encoder, raw, dynamo=exporter == "dynamo")
            fusions = _optimize(raw, staging / _MODEL_FILE, encoder)
        shutil.rmtree(raw.parent)
        manifest = {
            "recipe": RECIPE,
            "fingerprint": fingerprint,
            "model_type": model_type,
            "exporter": exporter,
            "optimizer_fusions": fusions,
            "export_seconds": round(time.perf_counter() - started, 1),
            "versions": _versions(),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if folder.exists():
            shutil.rmtree(folder)  # an export of an older recipe
        os.replace(staging, folder)
    except Exception as error:
        shutil.rmtree(staging, ignore_errors=True)
        if export_is_current(folder, fingerprint):  # another process finished first
            return
        raise OnnxUnavailable(f"exporting the encoder to ONNX failed: {error}") from error
    logger.info("Exported to %s in %.1f s", folder, time.perf_counter() - started)


def _torch_export(encoder: Any, path: Path, *, dynamo: bool) -> None:
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

    example = (torch.ones((2, 16), dtype=torch.int64), torch.ones((2, 16), dtype=torch.int64))
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["last_hidden_state"]}
    large = sum(p.numel() * p.element_size() for p in encoder.parameters()) > _EXTERNAL_DATA_BYTES
    with _eager_attention(encoder), torch.no_grad():
        if dynamo:
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            axes = {0: batch, 1: sequence}
            program = torch.onnx.export(
                HiddenStates(encoder).eval(),
                example,
                dynamo=True,
                dynamic_shapes={"input_ids": axes, "attention_mask": axes},
                optimize=True,
                verbose=False,
                **names,
            )
            program.save(str(path), external_data=large)
        else:
            axes = {0: "batch", 1: "sequence"}
            torch.onnx.export(
                HiddenStates(encoder).eval(),
                example,
                str(path),
                dynamo=False,
                opset_version=17,
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                **names,
            )


@contextlib.contextmanager
def _eager_attention(encoder: Any) -> Iterator[None]:
    """Eager attention while exporting: the optimizer fuses its pattern, not SDPA's."""
    before = getattr(encoder.config, "_attn_implementation", None)
    switch = hasattr(encoder, "set_attn_implementation") and before not in (None, "eager")
    if switch:
        encoder.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            encoder.set_attn_implementation(before)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' and optimizer's own warnings and per-pass INFO lines."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)


def _optimize(source: Path, target: Path, encoder: Any) -> dict[str, int]:
    """onnxruntime's transformer optimizer where it knows the architecture; else a plain copy."""
    import onnx

    config = encoder.config
    optimizer_type = _OPTIMIZER_TYPES.get(config.model_type)
    large = sum(p.numel() * p.element_size() for p in encoder.parameters()) > _EXTERNAL_DATA_BYTES
    if optimizer_type is None:
        onnx.save_model(onnx.load(str(source)), str(target), save_as_external_data=large)
        return {}
    from onnxruntime.transformers import optimizer

    heads = getattr(config, "num_heads", None) or config.num_attention_heads
    hidden = getattr(config, "d_model", None) or config.hidden_size
    optimized = optimizer.optimize_model(
        str(source), model_type=optimizer_type, num_heads=heads, hidden_size=hidden, opt_level=0
    )
    fusions = {name: n for name, n in optimized.get_fused_operator_statistics().items() if n}
    logger.debug("onnxruntime optimizer fusions: %s", fusions)
    optimized.save_model_to_file(str(target), use_external_data_format=large)
    return fusions


def session(path: Path, num_threads: int) -> Any:
    """An onnxruntime CPU session for ``path``: ``num_threads`` threads that sleep when idle."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Idle threads sleep instead of spinning: on a machine that runs anything else, spinning
    # threads steal the cores the work needs (measured on 2 cores under load: a short query
    # 8.5 ms → 4.3 ms, batches 6% faster; no loss measured when idle).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# -- fidelity gate ----------------------------------------------------------------------------


def gate_key(folder: Path) -> dict[str, Any]:
    """What a verdict depends on: these exact files, the runtime and the calibration set."""
    files = sorted(p for p in folder.glob(f"{_MODEL_FILE}*") if p.is_file())
    return {
        "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
        "onnxruntime": fidelity.version("onnxruntime"),
        "calibration": fidelity.calibration_digest(),
    }


def _versions() -> dict[str, str | None]:
    return {
        name: fidelity.version(name) for name in ("torch", "transformers", "onnx", "onnxruntime")
    }
