"""bf16 on CPUs that compute it natively, behind the fidelity gate.

CPUs with AVX512-BF16 or AMX multiply bfloat16 matrices at about twice the fp32 rate. Under
``torch.autocast`` the encoder's matrix products run in bf16 while softmax and layer norms stay
in fp32; the embeddings then differ from fp32 by float noise (calibration minimum cosine
0.99997 for all-MiniLM-L6-v2). The bf16 path is used only after it passes
:func:`instructor_search.encoder.fidelity.check` against fp32 with :data:`BF16_MIN_COSINE`, and only for
batches of at least :data:`BF16_MIN_BATCH_TOKENS` padded tokens: below that, a batch is too
small for the matrix units to pay and the fp32 path (ONNX Runtime when loaded) is faster.

bf16 is a fast path, never the drop-in default: ``Instructor(precision="auto")`` asks for it, as
builds, ``eval`` and the Retriever do; ``Instructor()`` is ``precision="fp32"``, the reference's
vectors within 1e-5.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from . import fidelity

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
#: Minimum cosine between bf16 and fp32 embeddings of the calibration set.
BF16_MIN_COSINE = 0.999
#: Smallest batch (rows x longest row) that runs in bf16, measured in bench/encode.py: at
#: 1 x 128 tokens ONNX fp32 and torch bf16 tie; from 4 x 64 on bf16 is faster.
BF16_MIN_BATCH_TOKENS = 256
VERDICT_FILE = "gate-bf16.json"


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), as torch detects it."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def store_linear_weights_in_bf16(encoder: Any) -> None:
    """Keep the encoder's Linear weights in bf16, as autocast would cast them on every call.

    Autocast does not cache casts of weights that need no gradient, so each forward would
    convert every weight again: ~5 ms per short query for MiniLM. The results are bitwise the
    same (tested); layer norms, embeddings and biases stay fp32.
    """
    import torch

    for layer in encoder.modules():
        if isinstance(layer, torch.nn.Linear):
            layer.weight.data = layer.weight.data.to(torch.bfloat16)


def use_bf16(
    requested: str,
    *,
    device: str,
    folder: Path,
    fingerprint: str,
    reference: Callable[[], np.ndarray],
    candidate: Callable[[], np.ndarray],
) -> bool:
    """Whether to run the torch encoder under bf16 autocast, for ``requested`` precision.

    ``auto``: where the CPU has native bf16 and the gate passes; ``bf16``: on any CPU if the
    gate passes; ``fp32``: never. A failed gate logs a warning and keeps fp32. The verdict is
    cached in ``folder`` (the model's cache folder).
    """
    if requested not in PRECISIONS:
        raise InputError(f"precision {requested!r} must be one of {list(PRECISIONS)}")
    if requested == "fp32":
        return False
    if device != "cpu":
        if requested == "bf16":
            raise InputError(f"precision='bf16' runs on the CPU, and the device is {device}")
        return False
    if requested == "auto" and not native_bf16():
        logger.debug("fp32: this CPU has no native bf16")
        return False
    import torch

    key = {
        "fingerprint": fingerprint,
        "torch": torch.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "calibration": fidelity.calibration_digest(),
    }
    verdict = fidelity.check(
        folder / VERDICT_FILE,
        key=key,
        threshold=BF16_MIN_COSINE,
        reference=reference,
        candidate=candidate,
        label="bf16",
    )
    if not verdict["passed"]:
        logger.warning(
            "Using fp32: bf16 failed the fidelity gate (minimum cosine %.6f < %s on %d "
            "calibration texts)",
            verdict["min_cosine"],
            BF16_MIN_COSINE,
            verdict["texts"],
        )
    return bool(verdict["passed"])
