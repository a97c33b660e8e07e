"""``tune``: the tiny real checkpoint trained for a few steps on a small generated set.

Real model, real optimizer, real index; the data is generated here (16 topics, each a document
and two queries that share its words).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY

from instructor_search import InputError, Instructor, ModelError, ReaderError
from instructor_search.encoder.checkpoints import resolve
from instructor_search.indexer.build import BuildSettings, build
from instructor_search.indexer.cli import cli
from instructor_search.search.retriever import Retriever
from instructor_search.training import RECORD_FILE, TuneSettings, load_training_data, tune
from instructor_search.training.data import batches
from instructor_search.training.loss import candidate_mask, contrastive_loss
from instructor_search.training.mining import mine_hard_negatives
from instructor_search.training.output import save_model
from instructor_search.training.trainer import (
    CHECKPOINT_FILE,
    Trainer,
    batch_loss,
    embed_for_training,
)

TOPICS = [
    ("volcano", "lava magma eruption crater ash"),
    ("bread", "flour yeast dough oven crust"),
    ("tax", "income return deduction refund filing"),
    ("planet", "orbit moon gravity telescope star"),
    ("asthma", "inhaler lungs breathing wheeze allergy"),
    ("lease", "tenant landlord deposit rent contract"),
    ("python", "code function module import loop"),
    ("garden", "soil seeds compost water roots"),
    ("violin", "strings bow music concert tune"),
    ("glacier", "ice snow melt valley cold"),
    ("bicycle", "wheel chain pedal brake saddle"),
    ("coffee", "beans roast espresso grind cup"),
    ("chess", "king queen pawn board checkmate"),
    ("vaccine", "immune dose antibody virus shot"),
    ("river", "bank flow delta fish bridge"),
    ("camera", "lens shutter photo focus light"),
]
QUERY_INSTRUCTION = "Represent the question for retrieving supporting documents: "
DOCUMENT_INSTRUCTION = "Represent the document for retrieval: "


def write_beir(folder: Path) -> Path:
    """Corpus, queries (two per topic), qrels/train.tsv (first query) and test.tsv (second)."""
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as corpus, (folder / "queries.jsonl").open("w") as q:
        for number, (topic, words) in enumerate(TOPICS):
            doc = {"_id": f"d{number}", "title": topic, "text": f"All about {topic}: {words}."}
            corpus.write(json.dumps(doc) + "\n")
            first, second = words.split()[:2], words.split()[2:4]
            q.write(json.dumps({"_id": f"q{number}", "text": f"{' '.join(first)}?"}) + "\n")
            q.write(json.dumps({"_id": f"t{number}", "text": f"{' '.join(second)}?"}) + "\n")
    header = "query-id\tcorpus-id\tscore\n"
    (folder / "qrels" / "train.tsv").write_text(
        header + "".join(f"q{n}\td{n}\t1\n" for n in range(len(TOPICS)))
    )
    (folder / "qrels" / "test.tsv").write_text(
        header + "".join(f"t{n}\td{n}\t1\n" for n in range(len(TOPICS)))
    )
    return folder


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "data")


def tiny_model() -> Instructor:
    return Instructor(str(TINY), profile="instructor", backend="torch", precision="fp32")


def fast(**changes) -> TuneSettings:
    """Settings that make a few large steps on the tiny model."""
    values = dict(
        model=str(TINY),
        batch_size=8,
        learning_rate=1e-3,
        hard_negatives=0,
        evaluate=False,
        max_steps=4,
        warmup_ratio=0.0,
        query_instruction=QUERY_INSTRUCTION,
        document_instruction=DOCUMENT_INSTRUCTION,
        checkpoint_every=2,
    )
    return TuneSettings(**(values | changes))


def examples_of(beir: Path):
    return load_training_data(
        beir, query_instruction=QUERY_INSTRUCTION, document_instruction=DOCUMENT_INSTRUCTION
    ).examples


def nothing_written(tmp_path: Path) -> list[str]:
    """What exists in ``tmp_path`` besides the data folder."""
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("data", "bad.jsonl"))


# -- the recipe -----------------------------------------------------------------------------------


def test_loss_falls_and_the_saved_folder_gives_the_in_memory_vectors(beir, tmp_path):
    examples = examples_of(beir)
    model = tiny_model()
    with torch.no_grad():
        before = float(batch_loss(model, examples, 0.1))
    settings = fast(max_steps=12, epochs=10)
    result = Trainer(model, examples, settings, tmp_path / "work", {}).run()
    assert result.steps == 12
    with torch.no_grad():
        after = float(batch_loss(model, examples, 0.1))
    assert after < before * 0.8, (before, after)

    folder = tmp_path / "saved"
    save_model(model, resolve(str(TINY)), folder)
    assert (folder / "model.safetensors").is_file()
    assert (folder / "2_Dense" / "model.safetensors").is_file()
    assert not (folder / "2_Dense" / "pytorch_model.bin").exists()
    reloaded = Instructor(str(folder), profile="instructor", backend="torch", precision="fp32")
    pairs = [[QUERY_INSTRUCTION, "lava and ash"], [DOCUMENT_INSTRUCTION, "flour, yeast, oven"]]
    np.testing.assert_allclose(reloaded.encode(pairs), model.encode(pairs), atol=1e-6)
    assert not np.allclose(tiny_model().encode(pairs), model.encode(pairs), atol=1e-3)
    assert reloaded.fingerprint != tiny_model().fingerprint


def test_resume_continues_from_the_checkpoint_with_the_same_weights(beir, tmp_path):
    examples = examples_of(beir)
    settings = fast(max_steps=6, epochs=10)
    straight = tiny_model()
    Trainer(straight, examples, settings, tmp_path / "a", {"data_hash": "x"}).run()

    def stop_at_3(step: int, total: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    interrupted = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        Trainer(
            interrupted, examples, settings, tmp_path / "b", {"data_hash": "x"}, on_step=stop_at_3
        ).run()
    assert (tmp_path / "b" / CHECKPOINT_FILE).is_file()

    resumed = tiny_model()
    with pytest.raises(InputError, match="--resume"):  # a checkpoint is never silently ignored
        Trainer(resumed, examples, settings, tmp_path / "b", {"data_hash": "x"}).run()
    with pytest.raises(InputError, match="data_hash"):
        Trainer(
            resumed,
            examples,
            fast(max_steps=6, epochs=10, resume=True),
            tmp_path / "b",
            {"data_hash": "y"},
        ).run()
    result = Trainer(
        resumed,
        examples,
        fast(max_steps=6, epochs=10, resume=True),
        tmp_path / "b",
        {"data_hash": "x"},
    ).run()
    assert result.resumed_from == 3 and result.steps == 6 and len(result.losses) == 6
    for name, value in straight.encoder.state_dict().items():
        assert torch.equal(value, resumed.encoder.state_dict()[name]), name
    assert torch.equal(straight.head.dense[0][0].weight, resumed.head.dense[0][0].weight)


def test_instruction_tokens_stay_out_of_the_pooled_mean_while_training():
    """The gradient of the training embedding reaches the text's token states, never the
    instruction's: pooled without them, exactly as ``encode`` pools (the same vectors)."""
    model = tiny_model()
    pairs = [(QUERY_INSTRUCTION, "lava and ash"), ("", "flour and yeast")]
    ids, excluded = model.tokenize([list(p) for p in pairs])
    assert excluded[0] > 1 and excluded[1] == 0
    captured = {}

    def keep(module, inputs, output):
        output[0].retain_grad()
        captured["hidden"] = output[0]

    model.encoder.train()
    handle = model.encoder.register_forward_hook(keep)
    try:
        embedding = embed_for_training(model, pairs)
    finally:
        handle.remove()
    embedding.sum().backward()
    grad = captured["hidden"].grad.abs().sum(dim=-1)  # (rows, tokens)
    assert torch.all(grad[0, : excluded[0]] == 0)
    assert torch.all(grad[0, excluded[0] : len(ids[0])] > 0)
    assert torch.all(grad[1, : len(ids[1])] > 0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())

    model.encoder.eval()
    with torch.no_grad():
        trained_path = embed_for_training(model, pairs).numpy()
    np.testing.assert_allclose(trained_path, model.encode([list(p) for p in pairs]), atol=1e-6)


def test_in_batch_duplicates_of_a_relevant_document_are_masked_not_pushed_away(beir):
    e0, e1, _ = examples_of(beir)[:3]  # q0 -> d0, q1 -> d1
    same_doc = replace(e1, positive_key="d0", relevant=frozenset({"d0"}))  # q1 -> d0 too
    other_positive = replace(e0, positive_key="d2", relevant=frozenset({"d0", "d2"}))  # q0 -> d2
    mask = candidate_mask([replace(e0, relevant=frozenset({"d0", "d2"})), same_doc, other_positive])
    assert mask.tolist() == [[True, False, False], [False, True, True], [False, False, True]]
    queries = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    aligned = contrastive_loss(queries, queries.clone(), 0.05)
    assert float(aligned) < float(contrastive_loss(queries, queries.flip(0), 0.05))
    masked = contrastive_loss(queries, queries.flip(0), 0.05, mask)
    assert torch.isfinite(masked)


def test_tune_stopped_by_ctrl_c_resumes_to_the_end(beir, tmp_path):
    out = tmp_path / "out"

    def ctrl_c_at_2(step: int, total: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(InputError, match="no checkpoint"):
        tune(beir, out, fast(resume=True))
    with pytest.raises(KeyboardInterrupt):
        tune(beir, out, fast(), on_step=ctrl_c_at_2)
    assert not out.exists() and (tmp_path / "out.tune" / CHECKPOINT_FILE).is_file()
    with pytest.raises(InputError, match="--resume to continue"):
        tune(beir, out, fast())
    report = tune(beir, out, fast(resume=True))
    assert (
        report.steps == 4 and json.loads((out / RECORD_FILE).read_text())["training"]["steps"] == 4
    )
    assert not (tmp_path / "out.tune").exists()


# -- the data -------------------------------------------------------------------------------------


def test_medi_batches_hold_one_task(tmp_path):
    medi = tmp_path / "medi.jsonl"
    records = [
        {
            "query": ["Represent the question: ", f"q{n}"],
            "pos": ["Represent the answer: ", f"a{n}"],
            "neg": ["Represent the answer: ", f"n{n}"],
            "task_id": n % 3,
        }
        for n in range(30)
    ]
    medi.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = load_training_data(medi)
    assert data.kind == "medi" and len(data.examples) == 30
    steps = batches(data.examples, 4, 2, seed=1)
    assert steps and all(len({data.examples[i].task for i in b}) == 1 for b in steps)
    assert steps == batches(data.examples, 4, 2, seed=1)  # fixed by the seed (resume)
    assert steps != batches(data.examples, 4, 2, seed=2)
    as_list = tmp_path / "medi.json"
    as_list.write_text(json.dumps(records))
    assert load_training_data(as_list).data_hash != data.data_hash


def test_hard_negatives_mined_from_an_index_are_never_relevant(beir, tmp_path):
    index = tmp_path / "index"
    build([beir / "corpus.jsonl"], index, BuildSettings(model=str(TINY), backend="torch"))
    examples = examples_of(beir)
    with Retriever(index, backend="torch") as retriever:
        mined = mine_hard_negatives(examples, retriever, 2, DOCUMENT_INSTRUCTION)
    for example in mined:
        assert len(example.negatives) == 2
        assert example.positive_key not in example.negative_keys
        assert all(pair[0] == DOCUMENT_INSTRUCTION for pair in example.negatives)


# -- bad input: a clear error, nothing written ----------------------------------------------------


def test_unknown_query_or_document_in_qrels_names_the_line(beir, tmp_path):
    qrels = beir / "qrels" / "train.tsv"
    lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join([*lines[:3], "nope\td1\t1", *lines[3:]]) + "\n")
    with pytest.raises(ReaderError, match=r"train\.tsv, line 4: query 'nope'"):
        tune(beir, tmp_path / "out", fast())
    qrels.write_text("\n".join([*lines[:2], "q1\tmissing-doc\t1", *lines[2:]]) + "\n")
    with pytest.raises(ReaderError, match=r"train\.tsv, line 3: document 'missing-doc'"):
        tune(beir, tmp_path / "out", fast())
    assert nothing_written(tmp_path) == []


def test_empty_training_sets_are_refused(beir, tmp_path):
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(InputError, match="no training pairs"):
        tune(beir, tmp_path / "out", fast())
    empty = tmp_path / "bad.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="empty"):
        tune(empty, tmp_path / "out", fast())
    assert nothing_written(tmp_path) == []


def test_medi_record_without_pos_names_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = {
        "query": ["Represent the question: ", "a"],
        "pos": ["Represent the answer: ", "b"],
        "task_id": 1,
    }
    bad.write_text(
        json.dumps(good) + "\n" + json.dumps({"query": good["query"], "task_id": 1}) + "\n"
    )
    with pytest.raises(ReaderError, match=r"bad\.jsonl, line 2: field 'pos' is missing"):
        tune(bad, tmp_path / "out", fast())
    bad.write_text(json.dumps({**good, "neg": "just a string"}) + "\n")
    with pytest.raises(ReaderError, match=r"line 1: field 'neg' must be \[instruction, text\]"):
        tune(bad, tmp_path / "out", fast())
    assert nothing_written(tmp_path) == []


def test_instruction_longer_than_the_model_limit_is_refused(beir, tmp_path):
    long = "Represent " + "the very long scientific claim " * 60 + ": "
    with pytest.raises(InputError, match=r"query instruction is \d+ tokens.*at most 256 tokens"):
        tune(beir, tmp_path / "out", fast(query_instruction=long))
    assert nothing_written(tmp_path) == []


def test_existing_output_needs_overwrite_and_stays_untouched(beir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="--overwrite"):
        tune(beir, out, fast())
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert nothing_written(tmp_path) == ["out"]


def test_an_onnx_only_base_cannot_be_trained(beir, tmp_path):
    onnx_only = tmp_path / "onnx-only"
    shutil.copytree(TINY, onnx_only, ignore=shutil.ignore_patterns("model.safetensors"))
    (onnx_only / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(ModelError, match=r"cannot be trained.*no torch weights"):
        tune(beir, tmp_path / "out", fast(model=str(onnx_only)))
    assert nothing_written(tmp_path) == ["onnx-only"]


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_tune_evaluates_writes_the_folder_and_the_model_builds_and_evals(beir, tmp_path):
    out = tmp_path / "tuned"
    runner = CliRunner()
    args = [
        "tune",
        str(beir),
        "--out",
        str(out),
        "--model",
        str(TINY),
        "--eval-split",
        "test",
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--learning-rate",
        "1e-3",
        "--hard-negatives",
        "1",
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "nDCG@10" in result.output and "dense" in result.output and "hybrid" in result.output
    assert not (tmp_path / "tuned.tune").exists()  # the work folder goes on success
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["profile"] == "instructor" and record["instruction_mode"] == "exclude"
    assert record["base_fingerprint"] == resolve(str(TINY)).fingerprint
    assert record["hyperparameters"]["max_steps"] == 4 and record["training"]["steps"] == 4
    assert len(record["data_hash"]) == 64
    evaluation = record["evaluation"]
    assert evaluation["queries"] == 16 and set(evaluation["base"]) >= {"dense", "hybrid"}
    assert 0 <= evaluation["tuned"]["dense"]["ndcg_at_10"] <= 1

    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "--overwrite" in again.output

    index = tmp_path / "tuned-index"
    built = runner.invoke(
        cli,
        [
            "build",
            str(beir / "corpus.jsonl"),
            "--index",
            str(index),
            "--model",
            str(out),
            "--backend",
            "torch",
        ],
    )
    assert built.exit_code == 0, built.output
    scored = runner.invoke(
        cli,
        [
            "eval",
            str(beir),
            "--index",
            str(index),
            "--model",
            str(out),
            "--backend",
            "torch",
            "--json",
        ],
    )
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output[scored.output.index("{") :])["queries"] == 16


@pytest.mark.slow
def test_tune_on_medi_from_python(tmp_path):
    medi = tmp_path / "medi.json"
    records = [
        {
            "query": [QUERY_INSTRUCTION, f"{words.split()[0]}?"],
            "pos": [DOCUMENT_INSTRUCTION, f"{topic}: {words}"],
            "neg": [DOCUMENT_INSTRUCTION, f"{TOPICS[(n + 1) % 16][0]}"],
            "task_id": n % 2,
        }
        for n, (topic, words) in enumerate(TOPICS)
    ]
    medi.write_text(json.dumps(records))
    report = tune(medi, tmp_path / "medi-model", fast(max_steps=3))
    assert report.steps == 3 and report.evaluation is None and report.improved is None
    record = json.loads((tmp_path / "medi-model" / RECORD_FILE).read_text())
    assert record["data_format"] == "medi" and record["profile"] == "instructor"
