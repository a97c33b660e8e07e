"""``TuneSettings``: the hyperparameters and switches of one ``tune`` run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError

#: The settings that change what is learned; recorded with the model and checked on resume.
HYPERPARAMETERS = (
    "epochs",
    "batch_size",
    "learning_rate",
    "temperature",
    "warmup_ratio",
    "max_steps",
    "hard_negatives",
    "max_seq_length",
    "weight_decay",
    "max_grad_norm",
    "seed",
)


@dataclass(frozen=True)
class TuneSettings:
    """How to fine-tune. The defaults start from INSTRUCTOR's ``train.py`` (learning rate 2e-5,
    ``--cl_temperature 0.1``, warmup ratio 0.1); see ``bench/RESULTS.md`` for what was measured.

    ``model`` is the base (hub id, folder, ``None`` = the bundled default); ``index`` names an
    index whose model and instruction pair are the base's and from which hard negatives are
    mined (a BEIR folder without ``corpus.jsonl`` takes its documents from there too).
    ``query_instruction`` / ``document_instruction`` ``None``: the index's pair, else the
    INSTRUCTOR profile's. ``eval_split``: a qrels split name (``"test"``: ``qrels/test.tsv``), a
    TSV path, or a fraction (``"0.2"``) of the training queries held out; ``None`` uses
    ``qrels/dev.tsv`` when it exists. ``work_dir`` (default ``<out>.tune``) holds checkpoints
    and the evaluation indexes (``base-index``, ``tuned-index``); it is removed when the run
    succeeds unless ``keep_work``.
    """

    model: str | None = None
    index: str | None = None
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    temperature: float = 0.1
    warmup_ratio: float = 0.1
    max_steps: int | None = None
    hard_negatives: int = 1
    query_instruction: str | None = None
    document_instruction: str | None = None
    train_split: str = "train"
    eval_split: str | None = None
    seed: int = 42
    max_seq_length: int = 256
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    checkpoint_every: int = 100
    evaluate: bool = True
    overwrite: bool = False
    resume: bool = False
    device: str | None = None
    work_dir: str | None = None
    keep_work: bool = False

    def __post_init__(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "temperature": self.temperature,
            "max_seq_length": self.max_seq_length,
            "checkpoint_every": self.checkpoint_every,
            "max_grad_norm": self.max_grad_norm,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise InputError(f"{name} must be a positive number, got {value!r}")
        if self.batch_size < 2:
            raise InputError(
                f"batch_size must be at least 2 (in-batch negatives), got {self.batch_size}"
            )
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be at least 1 (or None), got {self.max_steps!r}")
        if self.hard_negatives < 0:
            raise InputError(f"hard_negatives must be 0 or more, got {self.hard_negatives!r}")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must be 0 or more, got {self.weight_decay!r}")

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that change the result, as recorded with the model."""
        values = asdict(self)
        return {name: values[name] for name in HYPERPARAMETERS}
