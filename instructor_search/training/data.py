"""Training data: a BEIR folder or a MEDI file as contrastive :class:`Example`\\ s.

- A BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<train split>.tsv``): one example
  per relevant (query, document) pair, texts paired with the query and document instructions.
  The corpus may come from an index instead of ``corpus.jsonl``. Held-out queries for the
  evaluation come from ``qrels/dev.tsv``, another split, or a share of the training queries.
- A MEDI file (JSON list or JSONL), as in INSTRUCTOR's repository: records with ``query``,
  ``pos`` and ``neg`` (each ``[instruction, text]``) and ``task_id`` (or ``task_name``); a batch
  holds one task's records.

Errors name the file and the line (or record) and the field; nothing is read lazily, so a bad
input fails before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..documents import Document
from ..errors import InputError, ReaderError
from ..evaluate import Qrels, load_corpus, load_qrels, load_queries

logger = logging.getLogger(__name__)

Pair = tuple[str, str]  # (instruction, text)


@dataclass(frozen=True)
class Example:
    """One query with its positive and hard negatives, each an ``(instruction, text)`` pair.

    Keys identify documents (the BEIR document id, or the text for MEDI): a key in
    ``relevant`` is never used as a negative of this query, in-batch or hard.
    """

    query: Pair
    positive: Pair
    negatives: tuple[Pair, ...] = ()
    task: str = ""
    origin: str = ""  # where it was read ("qrels/train.tsv, line 12"), named in errors
    query_id: str = ""
    positive_key: str = ""
    negative_keys: tuple[str, ...] = ()
    relevant: frozenset[str] = frozenset()


@dataclass
class TrainingData:
    """What ``tune`` trains and evaluates on."""

    kind: str  # "beir" or "medi"
    source: Path
    examples: list[Example]
    data_hash: str
    #: Held-out queries and their judgements (BEIR only; empty when none are held out).
    eval_queries: dict[str, str] = field(default_factory=dict)
    eval_qrels: Qrels = field(default_factory=dict)
    eval_name: str = ""
    #: The documents searched in the evaluation (``None``: MEDI, or the index's own).
    corpus: list[Document] | None = None


def document_text(doc: Document) -> str:
    """The text a document is trained on: ``title + " " + text``, as the build embeds chunks."""
    return f"{doc.title} {doc.text}" if doc.title else doc.text


def load_training_data(
    data: str | Path,
    *,
    query_instruction: str = "",
    document_instruction: str = "",
    train_split: str = "train",
    eval_split: str | None = None,
    seed: int = 42,
    documents: Mapping[str, Document] | None = None,
) -> TrainingData:
    """Read ``data`` (a BEIR folder or a MEDI ``.json``/``.jsonl`` file) into examples.

    ``documents`` is the corpus of a BEIR folder without ``corpus.jsonl`` (an index's).
    """
    path = Path(data)
    if path.is_dir():
        return _load_beir(
            path,
            (query_instruction, document_instruction),
            train_split,
            eval_split,
            seed,
            documents,
        )
    if path.is_file() and path.suffix in (".json", ".jsonl"):
        if eval_split is not None:
            raise InputError(
                f"{path}: --eval-split applies to BEIR folders; a MEDI file has no held-out queries"
            )
        return _load_medi(path)
    raise ReaderError(
        f"{path} is neither a BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv) nor a "
        "MEDI .json/.jsonl file"
    )


# -- BEIR -----------------------------------------------------------------------------------------


def _load_beir(
    folder: Path,
    instructions: Pair,
    train_split: str,
    eval_split: str | None,
    seed: int,
    documents: Mapping[str, Document] | None,
) -> TrainingData:
    query_instruction, document_instruction = instructions
    corpus_file = folder / "corpus.jsonl"
    read: list[Path] = []
    if corpus_file.is_file():
        corpus = {doc.id: doc for doc in load_corpus(corpus_file)}
        read.append(corpus_file)
    elif documents is not None:
        corpus = dict(documents)
    else:
        raise ReaderError(
            f"{folder} has no corpus.jsonl: add it, or pass --index with an index of the corpus"
        )
    queries_file = folder / "queries.jsonl"
    train_file = folder / "qrels" / f"{train_split}.tsv"
    queries = load_queries(queries_file)
    train = _checked_qrels(train_file, queries, corpus)
    read += [queries_file, train_file]
    eval_qrels, eval_name = {}, ""
    if eval_split is None and (folder / "qrels" / "dev.tsv").is_file():
        eval_split = "dev"
    if eval_split is not None:
        eval_qrels, eval_name, eval_file = _held_out(
            folder, eval_split, train, seed, queries, corpus
        )
        if eval_file is not None:
            read.append(eval_file)
    examples = []
    for qid, judged in train.items():
        if qid in eval_qrels:
            continue  # held out: never trained on
        relevant = frozenset(doc for doc, grade in judged.items() if grade >= 1)
        for doc_id in sorted(relevant):
            examples.append(
                Example(
                    query=(query_instruction, queries[qid]),
                    positive=(document_instruction, document_text(corpus[doc_id])),
                    origin=f"{train_file}, query {qid}",
                    query_id=qid,
                    positive_key=doc_id,
                    relevant=relevant,
                )
            )
    if not examples:
        raise InputError(
            f"{train_file}: no training pairs (no query with a relevant document, grade >= 1, "
            "outside the held-out queries); add judgements or use another --train-split"
        )
    digest = _files_hash(read)
    if not corpus_file.is_file():  # the corpus is an index's: hash its documents' contents
        for doc_id in sorted(corpus):
            digest.update(f"{doc_id}\x00{corpus[doc_id].content_hash}\x00".encode())
    return TrainingData(
        kind="beir",
        source=folder,
        examples=examples,
        data_hash=digest.hexdigest(),
        eval_queries={qid: queries[qid] for qid in eval_qrels},
        eval_qrels=eval_qrels,
        eval_name=eval_name,
        corpus=list(corpus.values()) if corpus_file.is_file() else None,
    )


def _checked_qrels(path: Path, queries: Mapping[str, str], corpus: Mapping[str, Any]) -> Qrels:
    """``load_qrels`` of ``path``, with every query and document known (else: the line)."""
    qrels = load_qrels(path)
    for qid, judged in qrels.items():
        if qid not in queries:
            raise ReaderError(
                f"{path}, line {_line_of(path, 0, qid)}: query {qid!r} is not in queries.jsonl"
            )
        for doc_id in judged:
            if doc_id not in corpus:
                raise ReaderError(
                    f"{path}, line {_line_of(path, 1, doc_id)}: document {doc_id!r} is not in "
                    "the corpus"
                )
    return qrels


def _line_of(path: Path, column: int, value: str) -> int:
    """The first line of the TSV ``path`` whose ``column`` holds ``value``."""
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if number > 1 and len(row) > column and row[column] == value:
                return number
    return 0


def _held_out(
    folder: Path,
    split: str,
    train: Qrels,
    seed: int,
    queries: Mapping[str, str],
    corpus: Mapping[str, Any],
) -> tuple[Qrels, str, Path | None]:
    """The evaluation qrels: a split name, a TSV path, or a share (``0 < F < 1``) of ``train``."""
    try:
        share = float(split)
    except ValueError:
        share = None
    if share is not None:
        if not 0 < share < 1:
            raise InputError(f"--eval-split {split}: a share of the queries must be in (0, 1)")
        ids = sorted(train)
        random.Random(seed).shuffle(ids)
        count = max(1, round(len(ids) * share))
        if count >= len(ids):
            raise InputError(f"--eval-split {split} would hold out all {len(ids)} training queries")
        return {qid: train[qid] for qid in ids[:count]}, f"{count} held-out training queries", None
    path = Path(split) if split.endswith(".tsv") else folder / "qrels" / f"{split}.tsv"
    return _checked_qrels(path, queries, corpus), str(path), path


def _files_hash(paths: list[Path]) -> Any:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\x00")
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest


# -- MEDI -----------------------------------------------------------------------------------------


def _load_medi(path: Path) -> TrainingData:
    examples = [_medi_example(record, where) for record, where in _medi_records(path)]
    if not examples:
        raise InputError(f"{path}: the training set is empty (no records)")
    positives: dict[str, set[str]] = {}
    for example in examples:  # a text is relevant to every query it is the positive of
        positives.setdefault(example.query[1], set()).add(example.positive_key)
    examples = [replace(e, relevant=frozenset(positives[e.query[1]])) for e in examples]
    return TrainingData(
        kind="medi", source=path, examples=examples, data_hash=_files_hash([path]).hexdigest()
    )


def _medi_records(path: Path) -> Iterator[tuple[Any, str]]:
    """``(record, where)`` with ``where`` = ``"FILE, line N"`` (JSONL) or ``"FILE, record N"``."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReaderError(f"{path}, line {exc.lineno}: not JSON ({exc.msg})") from exc
        for number, record in enumerate(records, start=1):
            yield record, f"{path}, record {number}"
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"{path}, line {number}"
        except json.JSONDecodeError as exc:
            raise ReaderError(f"{path}, line {number}: not JSON ({exc.msg})") from exc


def _medi_example(record: Any, where: str) -> Example:
    if not isinstance(record, dict):
        raise ReaderError(f"{where}: a record must be an object, got {type(record).__name__}")
    query = _medi_pair(record, "query", where)
    positive = _medi_pair(record, "pos", where)
    negatives: tuple[Pair, ...] = ()
    if record.get("neg") is not None:
        negatives = (_medi_pair(record, "neg", where),)
    task = record.get("task_id", record.get("task_name", ""))
    return Example(
        query=query,
        positive=positive,
        negatives=negatives,
        task=str(task),
        origin=where,
        positive_key=positive[1],
        negative_keys=tuple(text for _, text in negatives),
    )


def _medi_pair(record: dict[str, Any], name: str, where: str) -> Pair:
    if name not in record:
        raise ReaderError(f"{where}: field {name!r} is missing (MEDI records need query and pos)")
    value = record[name]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(part, str) for part in value)
    ):
        raise ReaderError(f"{where}: field {name!r} must be [instruction, text], got {value!r}")
    if not value[1].strip():
        raise ReaderError(f"{where}: field {name!r} has an empty text")
    return value[0], value[1]


# -- batches --------------------------------------------------------------------------------------


def batches(examples: list[Example], batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Every step's example indices, all epochs, fixed by ``seed`` (so a resumed run sees the
    same batches): each batch holds one task's examples, as INSTRUCTOR's trainer does; the
    batch order is shuffled across tasks. A task's last batch may be smaller (at least 2)."""
    by_task: dict[str, list[int]] = {}
    for position, example in enumerate(examples):
        by_task.setdefault(example.task, []).append(position)
    steps: list[list[int]] = []
    for epoch in range(epochs):
        rng = random.Random(seed * 1_000_003 + epoch)
        epoch_batches = []
        for task in sorted(by_task):
            members = list(by_task[task])
            rng.shuffle(members)
            for start in range(0, len(members), batch_size):
                batch = members[start : start + batch_size]
                if len(batch) >= 2:  # a lone example has no in-batch negative
                    epoch_batches.append(batch)
        rng.shuffle(epoch_batches)
        steps += epoch_batches
    return steps
