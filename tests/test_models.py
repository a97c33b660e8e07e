"""Loading: the bundled default, local folders, hub ids offline, profiles and fingerprints."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from instructor_search import Instructor, ModelNotFoundError
from instructor_search.encoder.checkpoints import (
    BUNDLED_MODEL_ID,
    bundled_model_folder,
    read_checkpoint,
)
from instructor_search.encoder.precision import BF16_MIN_COSINE
from instructor_search.encoder.profiles import DROP, EXCLUDE_FROM_POOLING, PREPEND, profile_for


def test_bundled_default_loads_offline_with_its_own_layout(bundled):
    assert bundled.model_name == BUNDLED_MODEL_ID
    assert bundled.dimension == 384
    assert bundled.max_seq_length == 256  # from its sentence_bert_config.json
    assert not (bundled_model_folder() / "2_Normalize").exists()  # listed, not shipped
    vector = bundled.encode("A cat sits on the mat.")
    assert vector.shape == (384,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5  # its Normalize module ran


def test_bundled_matches_plain_transformers_mean_pooling(bundled):
    """The reference recipe for all-MiniLM-L6-v2: mean pooling + L2 norm, max 256 tokens."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = bundled_model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    texts = ["The Maillard reaction browns bread crust.", "Neutron stars are dense. " * 80]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    # The default is exact (bundled: Instructor(device="cpu")); the fast path stays in its gate.
    np.testing.assert_allclose(bundled.encode(texts), want, atol=1e-5)
    fast = Instructor(device="cpu", precision="auto").encode(texts)
    assert float(np.min(np.sum(fast * want, axis=1))) >= BF16_MIN_COSINE


def test_bundled_profile_drops_instructions_unless_forced(bundled):
    assert bundled.profile.instruction_mode == DROP
    text = "Sourdough needs a lively starter."
    with_instruction = bundled.encode([["Represent the cooking sentence: ", text]])
    np.testing.assert_allclose(with_instruction[0], bundled.encode(text), atol=1e-6)
    forced = Instructor(instruction_mode=PREPEND)
    prepended = forced.encode([["Represent the cooking sentence: ", text]])[0]
    np.testing.assert_allclose(
        prepended, forced.encode("Represent the cooking sentence: " + text), atol=1e-5
    )
    assert float(prepended @ bundled.encode(text)) < 0.999


def test_profiles_by_family(caplog):
    assert profile_for("hkunlp/instructor-large").instruction_mode == EXCLUDE_FROM_POOLING
    assert profile_for("hkunlp/instructor-xl").max_seq_length == 512
    assert profile_for(BUNDLED_MODEL_ID).instruction_mode == DROP
    assert profile_for("sentence-transformers/gtr-t5-base").family == "generic"
    with caplog.at_level(logging.WARNING):
        generic = profile_for("someone/unknown-encoder")
    assert generic.instruction_mode == DROP
    assert "unknown-encoder" in caplog.text


def _pairs_call(expected):
    return next(c for c in expected["calls"] if c["name"] == "pairs")


def test_profile_comes_from_the_checkpoint_not_its_folder_name(
    tiny_path, tmp_path, expected, caplog
):
    """A copy of the INSTRUCTOR checkpoint in ``my-model`` is INSTRUCTOR: the reference vectors."""
    copy = tmp_path / "my-model"
    shutil.copytree(tiny_path, copy)
    with caplog.at_level(logging.INFO, logger="instructor_search.encoder.profiles"):
        model = Instructor(str(copy), device="cpu", backend="torch")
    assert model.profile.family == "instructor" and model.own_profile
    chosen = [r for r in caplog.records if r.name == "instructor_search.encoder.profiles"]
    assert len(chosen) == 1 and chosen[0].levelno == logging.INFO
    assert "T5 encoder followed by a Dense module" in chosen[0].getMessage()
    call = _pairs_call(expected)
    np.testing.assert_allclose(model.encode(call["inputs"]), call["expected"], atol=1e-5)
    forced = Instructor(str(copy), device="cpu", backend="torch", profile="generic")
    assert forced.profile.family == "generic" and not forced.own_profile
    assert float(np.abs(forced.encode(call["inputs"]) - call["expected"]).max()) > 0.01


def test_profile_file_and_names_of_other_t5_families(tiny_path, tmp_path, caplog):
    """The project's ``instructor-search.json`` wins; a GTR / sentence-T5 name beats the layout."""
    saved = tmp_path / "tuned"
    shutil.copytree(tiny_path, saved)
    (saved / "instructor-search.json").write_text(
        json.dumps({"profile": "instructor", "instruction_mode": PREPEND, "examples": 3})
    )
    with caplog.at_level(logging.INFO, logger="instructor_search.encoder.profiles"):
        profile = profile_for(read_checkpoint(saved, name=str(saved)))
    assert (profile.family, profile.instruction_mode) == ("instructor", PREPEND)
    assert "instructor-search.json says so" in caplog.text
    (saved / "instructor-search.json").write_text(json.dumps({"profile": "generic"}))
    assert profile_for(str(saved)).family == "generic"  # a folder path is read as a checkpoint
    gtr = tmp_path / "gtr-t5-mine"
    shutil.copytree(tiny_path, gtr)
    assert profile_for(read_checkpoint(gtr, name=str(gtr))).family == "generic"
    bert_named_instructor = tmp_path / "instructor-minilm"
    shutil.copytree(bundled_model_folder(), bert_named_instructor)
    assert profile_for(str(bert_named_instructor)).family == "instructor"  # the name, at last


def test_fingerprint_is_stable_and_tracks_weights(tiny_path, tmp_path):
    first = Instructor(str(tiny_path)).fingerprint
    copy = tmp_path / "instructor-copy"
    shutil.copytree(tiny_path, copy)
    assert Instructor(str(copy)).fingerprint == first  # same bytes elsewhere: same fingerprint
    dense = json.loads((copy / "2_Dense" / "config.json").read_text())
    (copy / "2_Dense" / "config.json").write_text(json.dumps({**dense, "bias": False, "x": 1}))
    assert Instructor(str(copy)).fingerprint != first


def test_missing_folder_and_offline_hub_id_give_one_clear_error(monkeypatch, tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"not a folder"):
        Instructor(str(tmp_path / "nope" / "deeper"))
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        Instructor(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match=r"hkunlp/instructor-large.*HF_HUB_OFFLINE"):
        Instructor("hkunlp/instructor-large")


def test_max_text_tokens_reserves_instruction_and_special_tokens(tiny, bundled):
    instruction = "Represent the document for retrieval: "
    assert tiny.max_text_tokens(instruction) < tiny.max_text_tokens("") == 511
    assert bundled.max_text_tokens(instruction) == bundled.max_text_tokens("") == 254
