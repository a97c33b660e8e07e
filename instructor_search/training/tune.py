"""``tune``: fine-tune a model on labelled data with INSTRUCTOR's recipe, evaluate it against its
base on held-out queries, and write it as a sentence-transformers folder with its record.

Everything the run needs is checked before anything is written (data, instructions, base
model, destination); checkpoints and the evaluation indexes live in a work folder beside the
output, removed when the run succeeds.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..encoder import profiles
from ..encoder.checkpoints import resolve
from ..errors import InputError
from .data import Example, TrainingData, load_training_data
from .output import (
    check_destination,
    check_trainable,
    move_into_place,
    save_model,
    staging_folder,
    write_record,
)
from .settings import TuneSettings
from .trainer import CHECKPOINT_FILE, StepCallback, Trainer, TrainResult, plan_steps

if TYPE_CHECKING:
    from ..documents import Document
    from ..encoder.instructor import Instructor
    from ..store.index import CollectionSettings

logger = logging.getLogger(__name__)

#: The ranking modes evaluated before and after training.
EVAL_MODES = ("dense", "hybrid")


@dataclass
class TuneReport:
    """What ``tune`` did: the model folder, the training, and the evaluation (``None`` when no
    queries were held out) with ``base`` and ``tuned`` scores per mode."""

    out: Path
    examples: int
    steps: int
    total_steps: int
    first_loss: float
    last_loss: float
    training_seconds: float
    seconds: float
    evaluation: dict[str, Any] | None
    record: dict[str, Any]

    @property
    def improved(self) -> bool | None:
        """Whether the tuned model beats its base on nDCG@10 in every mode (None: not measured)."""
        if not self.evaluation:
            return None
        return all(self.evaluation["improved"].values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"out": str(self.out), "improved": self.improved}


def tune(
    data: str | Path,
    out: str | Path,
    settings: TuneSettings | None = None,
    *,
    show_progress: bool = False,
    on_step: StepCallback | None = None,
) -> TuneReport:
    """Fine-tune on ``data`` (a BEIR folder or a MEDI file) and write the model to ``out``.

    See :class:`TuneSettings` for the options; ``on_step(step, total, loss)`` is called after
    every optimizer step. Ctrl+C stops after the step in flight and saves a checkpoint
    (``settings.resume`` continues from it).
    """
    started = time.perf_counter()
    settings = settings or TuneSettings()
    out = Path(out)
    check_destination(out, settings.overwrite)
    base = _Base.find(settings)
    check_trainable(base.checkpoint)
    training = load_training_data(
        data,
        query_instruction=base.query_instruction,
        document_instruction=base.document_instruction,
        train_split=settings.train_split,
        eval_split=settings.eval_split,
        seed=settings.seed,
        documents=base.documents if Path(data).is_dir() else None,
    )
    with_instructions = any(pair[0].strip() for e in training.examples for pair in _pairs(e))
    profile = profiles.INSTRUCTOR if with_instructions else base.own_profile
    model = _load(base.checkpoint, settings.device, profile, "fp32")
    max_seq_length = min(settings.max_seq_length, model.max_seq_length)
    _check_instructions(training.examples, model, max_seq_length)
    plan_steps(training.examples, settings)  # enough examples for a batch, before any work
    work = work_folder(out, settings)
    _check_checkpoint(work / CHECKPOINT_FILE, settings)
    identity = {
        "data_hash": training.data_hash,
        "base_fingerprint": base.checkpoint.fingerprint,
        "hyperparameters": settings.hyperparameters(),
        "profile": profile.family,
    }

    evaluation = _Evaluation(training, base, work, settings, show_progress)
    examples = training.examples
    if settings.hard_negatives and training.kind == "beir":
        examples = evaluation.mine(examples, settings.hard_negatives)
    evaluation.before()

    logger.info("Training on %d examples (checkpoints in %s)", len(examples), work)
    trainer = Trainer(
        model, examples, settings, work, identity, show_progress=show_progress, on_step=on_step
    )
    own_length, model.max_seq_length = model.max_seq_length, max_seq_length
    try:  # the cap is for training inputs only; the saved model keeps its own
        result = trainer.run()
    finally:
        model.max_seq_length = own_length

    staged = staging_folder(out)
    try:
        save_model(model, base.checkpoint, staged)
        tuned = _load(staged, settings.device, profile, "auto")
        scores = evaluation.after(tuned, profile)
        record = _record(base, profile, training, settings, result, model.device, scores)
        write_record(staged, record)
        move_into_place(staged, out, settings.overwrite)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    if work.exists() and not settings.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    elif work.exists():
        (work / CHECKPOINT_FILE).unlink(missing_ok=True)  # done: nothing to resume
    return TuneReport(
        out=out,
        examples=len(examples),
        steps=result.steps,
        total_steps=result.total_steps,
        first_loss=_first(result.losses),
        last_loss=_last(result.losses),
        training_seconds=round(result.seconds, 1),
        seconds=round(time.perf_counter() - started, 1),
        evaluation=scores,
        record=record,
    )


# -- the base --------------------------------------------------------------------------------------


@dataclass
class _Base:
    """The base model, its instruction pair, and the index it comes from (if any)."""

    checkpoint: Any
    query_instruction: str
    document_instruction: str
    own_profile: profiles.ModelProfile
    index: Path | None = None
    collection: CollectionSettings | None = None
    documents: Mapping[str, Document] | None = None

    @classmethod
    def find(cls, settings: TuneSettings) -> _Base:
        default = profiles.INSTRUCTOR
        query, document = settings.query_instruction, settings.document_instruction
        if settings.index is None:
            checkpoint = resolve(settings.model)
            own = profiles.profile_for(checkpoint)
            return cls(
                checkpoint,
                default.query_instruction if query is None else query,
                default.document_instruction if document is None else document,
                own,
            )
        from ..store.index import Index

        with Index.open(Path(settings.index), readonly=True) as index:
            collection = index.settings
            documents = {doc_id: index.document(doc_id) for doc_id in index.document_hashes()}
        if settings.model is not None and str(settings.model) != collection.model:
            raise InputError(
                f"--model {settings.model} and --index {settings.index} disagree: the index was "
                f"built with {collection.model!r}, which is the base with --index; pass one of them"
            )
        checkpoint = resolve(collection.model)
        if checkpoint.fingerprint != collection.model_fingerprint:
            raise InputError(
                f"The model {collection.model!r} on disk is not the one {settings.index} was built "
                "with (its fingerprint differs); rebuild the index or pass --model"
            )
        pair = (collection.query_instruction, collection.document_instruction)
        if not any(part.strip() for part in pair):  # a model that drops instructions: learn some
            pair = (default.query_instruction, default.document_instruction)
        return cls(
            checkpoint,
            pair[0] if query is None else query,
            pair[1] if document is None else document,
            profiles.profile_for(checkpoint),
            index=Path(settings.index),
            collection=collection,
            documents={k: v for k, v in documents.items() if v is not None},
        )


def work_folder(out: Path, settings: TuneSettings) -> Path:
    """Where checkpoints and evaluation indexes go: ``settings.work_dir`` or ``OUT.tune``."""
    return Path(settings.work_dir) if settings.work_dir else out.parent / f"{out.name}.tune"


def _check_checkpoint(checkpoint: Path, settings: TuneSettings) -> None:
    """``resume`` needs a checkpoint; without it an old one is refused (``overwrite``: removed)."""
    if settings.resume and not checkpoint.is_file():
        raise InputError(f"--resume: no checkpoint at {checkpoint}; run without --resume")
    if not settings.resume and checkpoint.exists():
        if not settings.overwrite:
            raise InputError(
                f"{checkpoint} holds a checkpoint of an earlier run: pass --resume to continue "
                "it, or --overwrite to start over"
            )
        checkpoint.unlink()


def _load(model: Any, device: str | None, profile: profiles.ModelProfile, precision: str) -> Any:
    from ..encoder.instructor import Instructor

    return Instructor(model, device=device, profile=profile, backend="torch", precision=precision)


def _pairs(example: Example) -> list[tuple[str, str]]:
    return [example.query, example.positive, *example.negatives]


def _check_instructions(examples: list[Example], model: Instructor, max_seq_length: int) -> None:
    """Every instruction must leave room for its text within the model's input limit."""
    seen: set[str] = set()
    for example in examples:
        fields = ["query", "pos"] + ["neg"] * len(example.negatives)
        for field, (instruction, _) in zip(fields, _pairs(example)):
            if not instruction.strip() or instruction in seen:
                continue
            seen.add(instruction)
            count = len(model.tokenizer(instruction.strip())["input_ids"])
            if count >= max_seq_length:
                raise InputError(
                    f"{example.origin}: the {field} instruction is {count} tokens, but the model "
                    f"reads at most {max_seq_length} tokens per input (instruction and text "
                    f"together): shorten it ({instruction[:60]!r}...)"
                )


# -- evaluation -----------------------------------------------------------------------------------


class _Evaluation:
    """The base index (built in the work folder unless ``--index`` gave one), hard-negative
    mining from it, and the held-out queries scored on the base and on the tuned model."""

    def __init__(
        self,
        training: TrainingData,
        base: _Base,
        work: Path,
        settings: TuneSettings,
        show_progress: bool,
    ) -> None:
        self.training, self.base, self.work, self.settings = training, base, work, settings
        self.show_progress = show_progress
        self.wanted = settings.evaluate and bool(training.eval_qrels)
        self.scores: dict[str, Any] = {}
        self._base_index = base.index

    def _documents(self) -> list[Document]:
        if self.training.corpus is not None:
            return self.training.corpus
        return list((self.base.documents or {}).values())

    def base_index(self) -> Path:
        """The index the base model searches: ``--index``'s, or one built from the corpus."""
        if self._base_index is None:
            from ..indexer.build import BuildSettings, add_documents

            self._base_index = self.work / "base-index"
            logger.info("Indexing %d documents with the base model", len(self._documents()))
            build = BuildSettings(
                model=self.base.checkpoint.name,
                document_instruction=self.base.document_instruction,
                query_instruction=self.base.query_instruction,
                backend="torch",
            )
            add_documents(
                self._documents(), self._base_index, build, show_progress=self.show_progress
            )
        return self._base_index

    def mine(self, examples: list[Example], count: int) -> list[Example]:
        from ..search.retriever import Retriever
        from .mining import mine_hard_negatives

        logger.info("Mining %d hard negatives per query from %s", count, self.base_index())
        with Retriever(self.base_index(), backend="torch") as retriever:
            return mine_hard_negatives(examples, retriever, count, self.base.document_instruction)

    def before(self) -> None:
        if not self.wanted:
            return
        from ..search.retriever import Retriever

        with Retriever(self.base_index(), backend="torch") as retriever:
            self.scores["base"] = self._score(retriever, None)

    def after(self, tuned: Instructor, profile: profiles.ModelProfile) -> dict[str, Any] | None:
        if not self.wanted:
            return None
        from ..indexer.build import BuildSettings, add_documents
        from ..indexer.chunking import ChunkSettings
        from ..search.retriever import Retriever

        chunk = ChunkSettings()
        if self.base.collection is not None:
            chunk = ChunkSettings(
                self.base.collection.chunk_tokens, self.base.collection.chunk_overlap
            )
        folder = self.work / "tuned-index"
        build = BuildSettings(
            model=tuned.model_name,
            document_instruction=self.base.document_instruction,
            query_instruction=self.base.query_instruction,
            chunk=chunk,
            rebuild=True,
            backend="torch",
        )
        add_documents(
            self._documents(), folder, build, model=tuned, show_progress=self.show_progress
        )
        with Retriever(folder, model=tuned) as retriever:
            self.scores["tuned"] = self._score(retriever, None)
        self.scores["tuned"]["model"] = "the tuned model"
        improved = {
            mode: self.scores["tuned"][mode]["ndcg_at_10"] > self.scores["base"][mode]["ndcg_at_10"]
            for mode in EVAL_MODES
        }
        return {
            "queries": len(self.training.eval_qrels),
            "held_out": self.training.eval_name,
            "base": self.scores["base"],
            "tuned": self.scores["tuned"],
            "improved": improved,
        }

    def _score(self, retriever: Any, instruction: str | None) -> dict[str, Any]:
        from ..evaluate import evaluate

        scores: dict[str, Any] = {"model": retriever.model.model_name}
        for mode in EVAL_MODES:
            result = evaluate(
                retriever,
                self.training.eval_queries,
                self.training.eval_qrels,
                mode=mode,
                instruction=instruction,
                show_progress=self.show_progress,
            )
            scores[mode] = {key: round(result[key], 4) for key in ("ndcg_at_10", "recall_at_100")}
        return scores


# -- the record -----------------------------------------------------------------------------------


def _record(
    base: _Base,
    profile: profiles.ModelProfile,
    training: TrainingData,
    settings: TuneSettings,
    result: TrainResult,
    device: str,
    evaluation: dict[str, Any] | None,
) -> dict[str, Any]:
    """What ``instructor-search.json`` holds: how the model was made and how it scored."""
    return {
        "profile": profile.family,
        "instruction_mode": profile.instruction_mode,
        "query_instruction": base.query_instruction,
        "document_instruction": base.document_instruction,
        "base_model": base.checkpoint.name,
        "base_fingerprint": base.checkpoint.fingerprint,
        "data": str(training.source),
        "data_format": training.kind,
        "data_hash": training.data_hash,
        "examples": len(training.examples),
        "hyperparameters": settings.hyperparameters(),
        "training": {
            "steps": result.steps,
            "first_loss": _first(result.losses),
            "last_loss": _last(result.losses),
            "seconds": round(result.seconds, 1),
            "device": device,
        },
        "evaluation": evaluation,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "instructor_search_version": __version__,
    }


def _window(losses: list[float]) -> int:
    """Steps averaged for the first and the last loss: up to 5, never overlapping."""
    return max(1, min(5, len(losses) // 2))


def _first(losses: list[float]) -> float:
    part = losses[: _window(losses)]
    return round(sum(part) / len(part), 4) if part else 0.0


def _last(losses: list[float]) -> float:
    part = losses[-_window(losses) :]
    return round(sum(part) / len(part), 4) if part else 0.0
