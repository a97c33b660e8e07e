"""bf16 on the CPU: the fidelity gate decides, large batches use it, queries and fp32 do not.

Real models throughout (the tiny T5 checkpoint and the bundled MiniLM). ``precision="bf16"``
runs on any x86 CPU (emulated where bf16 is not native), so these tests do not depend on the
machine; only the ``auto`` choice does.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from instructor_search import Instructor
from instructor_search.encoder import fidelity, precision
from instructor_search.encoder import onnx_backend as ob
from instructor_search.errors import InputError

PASSAGES = [
    f"Passage {n}: neutron stars are the collapsed cores of massive stars, and sourdough needs "
    f"a lively starter and a long, cool proof. " * (1 + n % 5)
    for n in range(24)
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("precision-cache")


@pytest.fixture(scope="module")
def bundled_bf16(cache):
    return Instructor(device="cpu", precision="bf16", onnx_cache=cache)


@pytest.fixture(scope="module")
def bundled_fp32(cache):
    return Instructor(device="cpu", precision="fp32", onnx_cache=cache)


def test_calibration_set_is_varied_real_text():
    pairs = fidelity.calibration_pairs()
    assert 24 <= len(pairs) <= 64
    lengths = sorted(len(text.split()) for _, text in pairs)
    assert lengths[0] <= 2 and lengths[-1] >= 400  # one word … longer than 512 tokens
    assert all(isinstance(i, str) and isinstance(t, str) and t for i, t in pairs)


def test_bf16_embeds_like_fp32_but_not_bit_for_bit(bundled_bf16, bundled_fp32):
    assert (bundled_bf16.precision, bundled_fp32.precision) == ("bf16", "fp32")
    got, want = bundled_bf16.embed(PASSAGES), bundled_fp32.embed(PASSAGES)
    cosines = np.sum(got * want, axis=1)
    assert float(cosines.min()) >= precision.BF16_MIN_COSINE
    assert float(np.abs(got - want).max()) > 1e-6  # the batches really ran in bf16


def test_bf16_weights_are_stored_once_with_the_same_results(tiny_path, tiny):
    """Linear weights kept in bf16 give bitwise autocast's results on the fp32 weights."""
    import torch

    model = Instructor(str(tiny_path), device="cpu", backend="torch", precision="bf16")
    linear = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(m.weight.dtype == torch.bfloat16 for m in linear)
    stored = model._embed_calibration(None, bf16=True)
    cast_per_call = tiny._embed_calibration(None, bf16=True)  # tiny: fp32 weights
    assert np.array_equal(stored, cast_per_call)
    with pytest.raises(InputError, match="runs in bf16 on the CPU"):
        model.encode(["x"], device="cuda")


def test_small_batches_stay_fp32(bundled_bf16, bundled_fp32):
    """A query is below the bf16 batch size: it runs in fp32, on ONNX Runtime when loaded."""
    query = ["do statins cause diabetes"]
    np.testing.assert_allclose(bundled_bf16.embed(query), bundled_fp32.embed(query), atol=1e-6)


def test_gate_verdict_is_cached_with_its_key(bundled_bf16, cache, caplog):
    file = ob.export_folder(bundled_bf16.fingerprint, cache) / precision.VERDICT_FILE
    verdict = json.loads(file.read_text())
    assert verdict["passed"] and verdict["min_cosine"] >= precision.BF16_MIN_COSINE
    assert verdict["key"]["fingerprint"] == bundled_bf16.fingerprint
    with caplog.at_level(logging.INFO, logger="instructor_search"):
        again = Instructor(device="cpu", precision="bf16", onnx_cache=cache)
    assert again.precision == "bf16" and "Fidelity gate" not in caplog.text


def test_failed_gate_keeps_fp32_with_a_warning(tiny_path, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision, "BF16_MIN_COSINE", 1.0)  # bf16 never reaches it
    with caplog.at_level(logging.INFO, logger="instructor_search"):
        model = Instructor(
            str(tiny_path), device="cpu", backend="torch", precision="bf16", onnx_cache=tmp_path
        )
    assert model.precision == "fp32"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("Using fp32: bf16 failed the fidelity")


@pytest.mark.parametrize("batch_size", [1, 3, 4, 32])
def test_default_is_exact_at_every_batch_size(expected, tiny_path, cache, batch_size):
    """The drop-in default gives the reference vectors within 1e-5, whatever the CPU."""
    model = _default_tiny(tiny_path, cache)
    assert model.precision == "fp32"
    for name in ("pairs", "strings"):
        call = next(c for c in expected["calls"] if c["name"] == name)
        got = model.encode(call["inputs"], batch_size=batch_size)
        np.testing.assert_allclose(got, call["expected"], atol=fidelity.EXACT_ATOL)


_DEFAULTS: dict = {}


def _default_tiny(tiny_path, cache):
    if "tiny" not in _DEFAULTS:
        _DEFAULTS["tiny"] = Instructor(str(tiny_path), device="cpu", onnx_cache=cache)
    return _DEFAULTS["tiny"]


def test_bf16_is_the_explicit_fast_path_on_a_native_cpu(expected, tiny_path, cache, monkeypatch):
    """On a CPU with native bf16 (simulated here: the gate runs bf16 for real), the default
    stays fp32 and precision="auto" takes bf16 within its gate."""
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    default = Instructor(str(tiny_path), device="cpu", backend="torch", onnx_cache=cache)
    fast = Instructor(
        str(tiny_path), device="cpu", backend="torch", precision="auto", onnx_cache=cache
    )
    assert (default.precision, fast.precision) == ("fp32", "bf16")
    call = next(c for c in expected["calls"] if c["name"] == "pairs")
    want = np.array(call["expected"])
    np.testing.assert_allclose(default.encode(call["inputs"], batch_size=3), want, atol=1e-5)
    got = fast.encode(call["inputs"], batch_size=3)
    assert float(np.min(np.sum(got * want, axis=1))) >= precision.BF16_MIN_COSINE
    assert float(np.abs(got - want).max()) > fidelity.EXACT_ATOL  # bf16 really ran


def test_precision_names_and_combinations_are_checked(tiny_path):
    with pytest.raises(InputError, match=r"must be one of \['auto', 'fp32', 'bf16'\]"):
        Instructor(str(tiny_path), precision="int4")
    with pytest.raises(InputError, match="runs on the torch encoder"):
        Instructor(str(tiny_path), backend="onnx", precision="bf16")
