"""The ONNX Runtime backend against the torch path: fixture parity, the fidelity gate, the cache.

Real components throughout: the tiny T5 checkpoint and the bundled MiniLM are exported once per
test session into a temporary cache, and compared with the torch path and the reference vectors.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil

import numpy as np
import pytest

from instructor_search import Instructor
from instructor_search.encoder import onnx_backend as ob
from instructor_search.encoder.forward import physical_cores
from instructor_search.encoder.inputs import token_budget_batches
from instructor_search.errors import InputError

needs_onnx = pytest.mark.skipif(
    bool(ob.missing_dependencies("t5")),
    reason=f"ONNX backend dependencies not installed: {ob.missing_dependencies('t5')} "
    "(pip install onnxruntime onnx onnxscript)",
)

# Fixture calls run on the full tiny checkpoint, with inputs from 1 to 512 tokens.
_CALLS = (
    "pairs",
    "pairs_batch_size_4",
    "triples",
    "strings",
    "pairs_max_seq_length_32",
    "strings_max_seq_length_32",
    "token_embeddings",
)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_path, onnx_cache):
    model = Instructor(str(tiny_path), device="cpu", backend="onnx", onnx_cache=onnx_cache)
    assert model.backend == "onnx"
    return model


@pytest.fixture(scope="session")
def bundled_onnx(onnx_cache):
    return Instructor(device="cpu", backend="onnx", onnx_cache=onnx_cache)


def _call(expected, name):
    return next(c for c in expected["calls"] if c["name"] == name)


def _check_call(model, call, atol):
    model.max_seq_length = call["max_seq_length"]
    try:
        result = model.encode(call["inputs"], **call["encode_kwargs"])
    finally:
        model.max_seq_length = 512
    if call["encode_kwargs"].get("output_value") == "token_embeddings":
        for got, want in zip(result, call["expected"]):
            np.testing.assert_allclose(got.numpy(), want, atol=atol, err_msg=call["name"])
    else:
        np.testing.assert_allclose(result, call["expected"], atol=atol, err_msg=call["name"])


@needs_onnx
def test_onnx_tiny_t5_reproduces_the_reference_vectors(expected, tiny_onnx):
    atol = expected["tolerance"]["atol"]
    for name in _CALLS:
        call = _call(expected, name)
        assert call["modules"] == "all"
        _check_call(tiny_onnx, call, atol)


@needs_onnx
def test_onnx_tiny_t5_is_right_at_every_sequence_length(expected, tiny_onnx):
    """One input per batch: each runs at its own length (8 … 512 tokens), never the traced one."""
    call = _call(expected, "pairs")
    lengths = {len(t["input_ids"]) for t in call["tokenization"]}
    assert len(lengths) >= 10 and max(lengths) == 512
    result = tiny_onnx.encode(call["inputs"], batch_size=1)
    np.testing.assert_allclose(result, call["expected"], atol=expected["tolerance"]["atol"])


@needs_onnx
def test_onnx_bundled_minilm_matches_torch(bundled_onnx):
    torch_model = Instructor(device="cpu", backend="torch", precision="fp32")
    assert bundled_onnx.backend == "onnx"
    texts = [
        "Tides",
        "Sourdough needs a lively starter and a long, cool proof.",
        "Neutron stars are the collapsed cores of massive stars. " * 12,  # truncated at 256
        "Le compost mûrit en six à douze mois.",
        *[f"Passage {n}: " + "the quick brown fox jumps over the lazy dog " * n for n in (2, 5, 9)],
    ]
    got, want = bundled_onnx.encode(texts, batch_size=3), torch_model.encode(texts, batch_size=3)
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.9999
    np.testing.assert_allclose(got, want, atol=1e-5)
    manifest = json.loads((bundled_onnx._onnx.folder / "manifest.json").read_text())
    assert manifest["optimizer_fusions"].get("Attention", 0) >= 6  # eager export: attention fused


@needs_onnx
def test_export_and_gate_are_cached(tiny_path, tiny_onnx, onnx_cache, caplog):
    folder = ob.export_folder(tiny_onnx.fingerprint, onnx_cache)
    assert folder.parent == onnx_cache and folder.name == tiny_onnx.fingerprint[:16]
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {"model.onnx", "manifest.json", "gate.json"} <= set(stamps)
    assert json.loads((folder / "gate.json").read_text())["passed"]
    with caplog.at_level(logging.INFO, logger="instructor_search"):
        again = Instructor(str(tiny_path), device="cpu", onnx_cache=onnx_cache, precision="fp32")
    assert again.backend == "onnx"
    assert "Exporting" not in caplog.text and "Fidelity gate" not in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


@needs_onnx
def test_gate_rejects_a_mismatched_export_and_falls_back_to_torch(
    expected, tiny_path, tiny_onnx, tmp_path, caplog
):
    """An export of other weights in the model's cache folder: the gate measures and refuses it."""
    import torch

    cache = tmp_path / "cache"
    folder = ob.export_folder(tiny_onnx.fingerprint, cache)
    shutil.copytree(tiny_onnx._onnx.folder, folder)
    other = copy.deepcopy(tiny_onnx.encoder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = other.encoder.final_layer_norm.weight
        weight.mul_(1 + 0.3 * torch.randn(weight.shape, generator=generator))
    with ob.quiet():
        ob._torch_export(other, folder / "model.onnx", dynamo=False)
    with caplog.at_level(logging.INFO, logger="instructor_search"):
        model = Instructor(str(tiny_path), device="cpu", backend="onnx", onnx_cache=cache)
    assert model.backend == "torch"
    fallbacks = [r for r in caplog.records if "Using the torch backend" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].levelno == logging.WARNING
    assert "failed the fidelity gate: minimum cosine" in fallbacks[0].getMessage()
    verdict = json.loads((folder / "gate.json").read_text())
    assert not verdict["passed"] and verdict["min_cosine"] < ob.FP32_MIN_COSINE
    _check_call(model, _call(expected, "pairs"), expected["tolerance"]["atol"])  # torch is right
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="instructor_search"):
        Instructor(str(tiny_path), device="cpu", onnx_cache=cache, precision="fp32")
    assert "Fidelity gate for" not in caplog.text  # the failed verdict is cached too
    assert "failed the fidelity gate" in caplog.text


@needs_onnx
def test_corrupt_export_falls_back_to_torch_with_the_reason(tiny_path, tiny_onnx, tmp_path, caplog):
    cache = tmp_path / "cache"
    folder = ob.export_folder(tiny_onnx.fingerprint, cache)
    shutil.copytree(tiny_onnx._onnx.folder, folder)
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    with caplog.at_level(logging.WARNING, logger="instructor_search"):
        model = Instructor(str(tiny_path), device="cpu", onnx_cache=cache, precision="fp32")
    assert model.backend == "torch"
    assert "could not open" in caplog.text and f"delete {folder}" in caplog.text


def test_without_onnxruntime_auto_uses_torch_with_one_line(tiny_path, monkeypatch, caplog):
    monkeypatch.setattr(ob, "missing_dependencies", lambda model_type="": ["onnxruntime"])
    with caplog.at_level(logging.INFO, logger="instructor_search"):
        model = Instructor(str(tiny_path), device="cpu", precision="fp32")
    assert model.backend == "torch"
    lines = [r.getMessage() for r in caplog.records if r.name == ob.__name__]
    assert lines == [
        "Using the torch backend: onnxruntime is not installed (pip install onnxruntime)"
    ]
    with pytest.raises(ob.OnnxUnavailable, match=r"backend='onnx' is not available"):
        Instructor(str(tiny_path), device="cpu", backend="onnx")


def test_backend_names_are_checked(tiny_path):
    with pytest.raises(InputError, match=r"must be one of \['auto', 'torch', 'onnx'\]"):
        Instructor(str(tiny_path), backend="tensorrt")


def test_cache_root_is_visible_and_configurable(monkeypatch, tmp_path):
    monkeypatch.setenv(ob.CACHE_ENV, str(tmp_path / "isc"))
    assert ob.cache_root() == tmp_path / "isc" / "onnx"
    assert ob.cache_root(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv(ob.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ob.cache_root() == tmp_path / "xdg" / "instructor-search" / "onnx"


def testtoken_budget_batches():
    lengths = [100, 30, 512, 8, 30, 60]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = token_budget_batches(order, lengths, batch_size=32, max_tokens=128)
    assert batches == [[2], [0], [5, 1], [4, 3]]
    assert [i for b in batches for i in b] == order
    assert all(len(b) * lengths[b[0]] <= 128 or len(b) == 1 for b in batches)
    assert token_budget_batches(order, lengths, batch_size=2, max_tokens=10**6) == [
        [2, 0],
        [5, 1],
        [4, 3],
    ]


def test_token_budget_keeps_the_reference_vectors(expected, tiny_path):
    model = Instructor(
        str(tiny_path), device="cpu", backend="torch", max_tokens_per_batch=64, precision="fp32"
    )
    _check_call(model, _call(expected, "pairs"), expected["tolerance"]["atol"])


def test_threads_are_physical_cores():
    cores = physical_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))


@needs_onnx
def test_exact_default_takes_the_export_only_within_1e5(tiny_path, tiny_onnx, onnx_cache, caplog):
    """The drop-in default (precision="fp32") runs the export because it measured within 1e-5
    of torch; held to a tighter bound it runs torch, while precision="auto" keeps the export."""
    from instructor_search.encoder import fidelity

    verdict = json.loads((tiny_onnx._onnx.folder / "gate.json").read_text())
    assert 0 < verdict["max_abs_diff"] <= fidelity.EXACT_ATOL
    assert Instructor(str(tiny_path), device="cpu", onnx_cache=onnx_cache).backend == "onnx"
    tighter = verdict["max_abs_diff"] / 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fidelity, "EXACT_ATOL", tighter)
        with caplog.at_level(logging.INFO, logger="instructor_search"):
            exact = Instructor(str(tiny_path), device="cpu", onnx_cache=onnx_cache)
        fast = Instructor(str(tiny_path), device="cpu", onnx_cache=onnx_cache, precision="auto")
    assert (exact.backend, fast.backend) == ("torch", "onnx")
    lines = [r for r in caplog.records if "Using the torch backend" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "precision='auto' takes the export" in lines[0].getMessage()
