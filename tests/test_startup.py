"""One-off search start-up: requests checked before any model loads, no model for keyword
search, and the QueryEncoder (ONNX Runtime + tokenizers, no torch) embedding queries as the
Instructor does. Real parts: the tiny INSTRUCTOR checkpoint, a real build, real subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from instructor_search import Instructor
from instructor_search.encoder import fidelity
from instructor_search.encoder import onnx_backend as ob
from instructor_search.encoder.query import BUNDLE, QueryEncoder
from instructor_search.errors import FilterError, InputError
from instructor_search.indexer.build import BuildSettings, build
from instructor_search.search.retriever import Retriever

pytestmark = pytest.mark.skipif(
    bool(ob.missing_dependencies("t5")),
    reason=f"ONNX backend dependencies not installed: {ob.missing_dependencies('t5')}",
)

NOTES = {
    "stars.txt": "Neutron stars are the collapsed cores of massive stars.",
    "bread.txt": "Sourdough bread rises with a starter of wild yeast.",
    "bonds.txt": "Bonds pay a fixed coupon until they mature.",
    "tides.txt": "Tides rise and fall with the pull of the moon.",
}
QUERY = "How does sourdough bread rise?"


@pytest.fixture(scope="module")
def fast_tiny(tiny_path):
    """The tiny checkpoint as the Retriever loads it (the fast path, the session's cache)."""
    model = Instructor(str(tiny_path), device="cpu", precision="auto")
    assert model.backend == "onnx"
    return model


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_path):
    notes = tmp_path_factory.mktemp("notes")
    for name, text in NOTES.items():
        (notes / name).write_text(text)
    path = tmp_path_factory.mktemp("startup") / "index"
    build([notes], path, BuildSettings(model=str(tiny_path)))
    return path


def test_query_encoder_embeds_like_the_instructor(expected, fast_tiny):
    encoder = QueryEncoder.save(fast_tiny)
    assert encoder is not None and QueryEncoder.open(fast_tiny.fingerprint) is not None
    assert (encoder.fingerprint, encoder.dimension) == (fast_tiny.fingerprint, fast_tiny.dimension)
    assert encoder.profile == fast_tiny.profile and encoder.uses_instructions
    for name in ("pairs", "strings"):
        call = next(c for c in expected["calls"] if c["name"] == name)
        for batch_size in (1, 32):
            got = encoder.encode(call["inputs"], batch_size=batch_size)
            np.testing.assert_allclose(got, call["expected"], atol=fidelity.EXACT_ATOL)
    instruction = "Represent the question for retrieving supporting documents: "
    np.testing.assert_allclose(
        encoder.embed([QUERY], instruction), fast_tiny.embed([QUERY], instruction), atol=1e-6
    )
    assert encoder.encode([]).shape == (0, encoder.dimension)
    with pytest.raises(InputError, match="numpy arrays only"):
        encoder.encode([QUERY], convert_to_tensor=True)


def test_the_background_twin_embeds_alike_on_one_thread_fewer(fast_tiny):
    folder = QueryEncoder.save(fast_tiny).folder
    encoder = QueryEncoder(folder, fidelity.read_json(folder / BUNDLE / "query.json"), 2)
    twin = encoder.background()
    assert twin is not encoder and twin is encoder.background()  # made once
    assert twin._encoder.get_session_options().intra_op_num_threads == 1
    assert twin.background() is twin  # one thread: itself
    pairs = [["Represent the question: ", QUERY], ["", "a second, longer query about notes"]]
    np.testing.assert_allclose(
        twin.encode(pairs, normalize_embeddings=True),
        encoder.encode(pairs, normalize_embeddings=True),
        atol=fidelity.EXACT_ATOL,
    )


def test_changed_files_or_a_chosen_profile_give_no_query_encoder(tiny_path, fast_tiny):
    assert QueryEncoder.save(fast_tiny) is not None
    head = ob.export_folder(fast_tiny.fingerprint) / BUNDLE / "head.onnx"
    stat = head.stat()
    os.utime(head, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # other files than judged
    assert QueryEncoder.open(fast_tiny.fingerprint) is None
    assert QueryEncoder.save(fast_tiny) is not None  # saved and judged again
    assert QueryEncoder.open(fast_tiny.fingerprint) is not None
    chosen = Instructor(str(tiny_path), device="cpu", precision="auto", profile="instructor")
    assert not chosen.own_profile and QueryEncoder.save(chosen) is None
    assert not QueryEncoder.saved(chosen)


def test_saved_opens_no_session_for_a_query_encoder_saved_before(fast_tiny, monkeypatch):
    os.utime(ob.export_folder(fast_tiny.fingerprint) / BUNDLE / "head.onnx")  # judged again
    assert QueryEncoder.saved(fast_tiny)  # saved and checked: sessions opened to check it
    opened = []
    monkeypatch.setattr(ob, "session", lambda *args: opened.append(args))
    assert QueryEncoder.saved(fast_tiny) and opened == []


def test_bad_requests_fail_before_any_model_loads(index):
    with Retriever(index) as retriever:
        for bad in ({"k": 0}, {"mode": "semantic"}, {"mmr": 2.0}):
            with pytest.raises(InputError):
                retriever.search(QUERY, **bad)
        with pytest.raises(InputError, match="empty"):
            retriever.search("  ")
        with pytest.raises(FilterError, match="colour"):
            retriever.search(QUERY, where={"colour": "red"})
        with pytest.raises(FilterError, match=r"size.*abc"):  # size is a number
            retriever.search(QUERY, where={"size": {">=": "abc"}})
        hits = retriever.search("sourdough yeast", k=2, mode="keyword")
        assert hits[0].doc_id == "bread.txt"
        assert retriever._model is None  # nothing above loaded a model


_SEARCH = """
import json, sys
from instructor_search.search.retriever import Retriever
retriever = Retriever(sys.argv[1])
hits = {
    mode: [[h.chunk_id, h.score] for h in retriever.search(sys.argv[2], k=3, mode=mode)]
    for mode in ("dense", "hybrid")
}
heavy = [name for name in ("torch", "transformers", "pandas") if name in sys.modules]
print(json.dumps({"hits": hits, "heavy": heavy, "encoder": type(retriever.model).__name__}))
"""


def test_one_off_search_needs_neither_torch_nor_transformers_nor_pandas(index, fast_tiny):
    with Retriever(index) as first:  # loads the Instructor and saves its query encoder
        want = {m: first.search(QUERY, k=3, mode=m) for m in ("dense", "hybrid")}
    done = subprocess.run(
        [sys.executable, "-c", _SEARCH, str(index), QUERY],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["encoder"] == "QueryEncoder"
    for mode, hits in want.items():
        assert [c for c, _ in result["hits"][mode]] == [h.chunk_id for h in hits]
        np.testing.assert_allclose([s for _, s in result["hits"][mode]], [h.score for h in hits])


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "instructor_search.indexer.cli", "-v", "search", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_errors_come_before_the_model_and_keyword_search_loads_none(index):
    loaded = "Query encoder:"  # the Retriever's log line when a model loads
    empty = _cli(str(index), "   ")
    assert empty.returncode == 1 and "empty" in empty.stderr and loaded not in empty.stderr
    zero = _cli(str(index), QUERY, "-k", "0")
    assert zero.returncode == 2 and "-k" in zero.stderr
    unknown = _cli(str(index), QUERY, "--where", "colour=red")
    assert unknown.returncode == 1 and "'colour'" in unknown.stderr
    assert loaded not in unknown.stderr
    wrong_type = _cli(str(index), QUERY, "--where", "size>=abc")
    assert (
        wrong_type.returncode == 1 and "'size'" in wrong_type.stderr and "abc" in wrong_type.stderr
    )
    assert loaded not in wrong_type.stderr
    keyword = _cli(str(index), "sourdough yeast", "--mode", "keyword", "--json")
    assert keyword.returncode == 0 and loaded not in keyword.stderr
    assert json.loads(keyword.stdout)[0]["doc_id"] == "bread.txt"
