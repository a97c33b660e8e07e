"""The training loop: AdamW, gradient clipping, linear warmup then decay, a progress bar with
the loss and the ETA, a checkpoint every N steps, ``resume``, and Ctrl+C that stops after the
step in flight and saves a checkpoint.

Texts go through the model's own input preparation (:meth:`Instructor.tokenize`: the
instruction prepended, its tokens counted) and its own forward pass (pooling with those tokens
masked out, Dense, Normalize), with gradients on: the model is trained exactly as it embeds.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .data import Example, Pair, batches
from .loss import candidate_mask, contrastive_loss
from .settings import TuneSettings

if TYPE_CHECKING:
    import torch

    from ..encoder.instructor import Instructor

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
#: ``on_step(step, total_steps, loss)`` after each optimizer step (1-based step).
StepCallback = Callable[[int, int, float], None]


@dataclass
class TrainResult:
    """What the loop did: steps run in total, the loss of each step, and the time it took."""

    steps: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None


def embed_for_training(model: Instructor, pairs: Sequence[Pair]) -> torch.Tensor:
    """Sentence embeddings of ``(instruction, text)`` pairs with gradients: the same input
    preparation and forward pass as :meth:`Instructor.encode` (the fp32 torch encoder)."""
    import torch

    ids, excluded = model.tokenize([list(pair) for pair in pairs])
    with torch.enable_grad():
        return model.forward(ids, excluded)


def trainable_parameters(model: Instructor) -> list[torch.nn.Parameter]:
    """The encoder's and the Dense layers' parameters."""
    parameters = list(model.encoder.parameters())
    for dense in model.head.dense:
        parameters += list(dense.parameters())
    return parameters


def batch_loss(model: Instructor, examples: Sequence[Example], temperature: float) -> torch.Tensor:
    """The contrastive loss of one batch (see :mod:`.loss`)."""
    queries = embed_for_training(model, [e.query for e in examples])
    documents = [e.positive for e in examples] + [n for e in examples for n in e.negatives]
    candidates = embed_for_training(model, documents)
    allowed = candidate_mask(examples)
    return contrastive_loss(queries, candidates, temperature, allowed)


def plan_steps(examples: Sequence[Example], settings: TuneSettings) -> list[list[int]]:
    """Every step's example indices (see :func:`.data.batches`); ``max_steps`` overrides
    ``epochs``, as in transformers. An error when the examples make no batch."""
    per_epoch = len(batches(list(examples), settings.batch_size, 1, settings.seed))
    if not per_epoch:
        raise InputError(
            f"{len(examples)} training examples make no batch of 2 or more in one task; "
            "add examples or lower --batch-size"
        )
    epochs = settings.epochs
    if settings.max_steps is not None:
        epochs = -(-settings.max_steps // per_epoch)
    return batches(list(examples), settings.batch_size, epochs, settings.seed)[: settings.max_steps]


class Trainer:
    """Runs the steps of one ``tune`` over ``examples``; checkpoints live in ``work_dir``.

    ``identity`` (data hash, hyperparameters, base fingerprint) is stored in each checkpoint;
    resuming from a checkpoint with another identity is refused.
    """

    def __init__(
        self,
        model: Instructor,
        examples: list[Example],
        settings: TuneSettings,
        work_dir: Path,
        identity: dict[str, Any],
        *,
        show_progress: bool = False,
        on_step: StepCallback | None = None,
    ) -> None:
        self.model, self.examples, self.settings = model, examples, settings
        self.checkpoint_file = Path(work_dir) / CHECKPOINT_FILE
        self.identity = identity
        self.show_progress, self.on_step = show_progress, on_step
        self.steps = plan_steps(examples, settings)

    def run(self) -> TrainResult:
        import torch
        import transformers

        torch.manual_seed(self.settings.seed)
        self._rng = torch.get_rng_state()  # the dropout RNG at the start of the next step
        total = len(self.steps)
        parameters = trainable_parameters(self.model)
        optimizer = torch.optim.AdamW(
            parameters, lr=self.settings.learning_rate, weight_decay=self.settings.weight_decay
        )
        scheduler = transformers.get_linear_schedule_with_warmup(
            optimizer, round(self.settings.warmup_ratio * total), total
        )
        result = TrainResult(steps=0, total_steps=total)
        if self.settings.resume:
            self._load(optimizer, scheduler, result)
        elif self.checkpoint_file.exists():
            raise InputError(
                f"{self.checkpoint_file} holds a checkpoint of an earlier run: pass --resume to "
                "continue it, or --overwrite to start over"
            )
        self._train_mode(True)
        started = time.perf_counter() - result.seconds
        bar = self._bar(total, result.steps)
        consistent = True  # the weights are those after ``result.steps`` whole steps
        try:
            with _stop_requests() as stop:
                for step in range(result.steps, total):
                    batch = [self.examples[i] for i in self.steps[step]]
                    loss = batch_loss(self.model, batch, self.settings.temperature)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(parameters, self.settings.max_grad_norm)
                    consistent = False
                    optimizer.step()
                    scheduler.step()
                    result.steps, consistent = step + 1, True
                    self._rng = torch.get_rng_state()
                    result.losses.append(float(loss.detach()))
                    result.seconds = time.perf_counter() - started
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{result.losses[-1]:.4f}", refresh=False)
                    if self.on_step is not None:
                        self.on_step(result.steps, total, result.losses[-1])
                    if result.steps % self.settings.checkpoint_every == 0 and result.steps < total:
                        self._save(optimizer, scheduler, result)
                    if stop.is_set():
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if consistent:
                self._save(optimizer, scheduler, result)
                logger.warning(
                    "Stopped after step %d of %d; checkpoint saved in %s (resume with --resume)",
                    result.steps,
                    total,
                    self.checkpoint_file,
                )
            raise
        finally:
            if bar is not None:
                bar.close()
            self._train_mode(False)
        result.seconds = time.perf_counter() - started
        return result

    # -- checkpoints ---------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "encoder": self.model.encoder.state_dict(),
            "dense": [dense.state_dict() for dense in self.model.head.dense],
        }

    def _save(self, optimizer: Any, scheduler: Any, result: TrainResult) -> None:
        """The whole training state, written to a temporary file and renamed over the last."""
        import torch

        self.checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.checkpoint_file.with_suffix(f".tmp-{os.getpid()}")
        state = {
            "identity": self.identity,
            "step": result.steps,
            "losses": result.losses,
            "seconds": result.seconds,
            "model": self._state(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": self._rng,
        }
        torch.save(state, temporary)
        os.replace(temporary, self.checkpoint_file)
        logger.info("checkpoint at step %d: %s", result.steps, self.checkpoint_file)

    def _load(self, optimizer: Any, scheduler: Any, result: TrainResult) -> None:
        import torch

        if not self.checkpoint_file.is_file():
            raise InputError(
                f"--resume: no checkpoint at {self.checkpoint_file}; run without --resume"
            )
        state = torch.load(self.checkpoint_file, map_location=self.model.device, weights_only=True)
        differs = sorted(
            key
            for key in set(self.identity) | set(state["identity"])
            if self.identity.get(key) != state["identity"].get(key)
        )
        if differs:
            raise InputError(
                f"--resume: the checkpoint {self.checkpoint_file} was made with other "
                f"{', '.join(differs)}; use the same data and settings, or --overwrite to start over"
            )
        self.model.encoder.load_state_dict(state["model"]["encoder"])
        for dense, saved in zip(self.model.head.dense, state["model"]["dense"]):
            dense.load_state_dict(saved)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        self._rng = torch.get_rng_state()
        result.steps = result.resumed_from = int(state["step"])
        result.losses = list(state["losses"])
        result.seconds = float(state["seconds"])
        logger.info("resumed at step %d from %s", result.steps, self.checkpoint_file)

    # -- helpers -------------------------------------------------------------------------------

    def _train_mode(self, on: bool) -> None:
        self.model.encoder.train(on)
        for dense in self.model.head.dense:
            dense.train(on)

    def _bar(self, total: int, done: int) -> Any:
        if not self.show_progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=done,
            desc="Training",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
        )


@contextmanager
def _stop_requests() -> Iterator[Any]:
    """A first Ctrl+C sets the yielded event (the loop stops after the step in flight and saves
    a checkpoint); a second one interrupts at once. Outside the main thread: no handler."""
    import threading

    stop = threading.Event()

    def request(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        logger.warning("Stopping after this step (Ctrl+C again to stop at once, unsaved)")

    try:
        previous = signal.signal(signal.SIGINT, request)
    except ValueError:  # not the main thread
        yield stop
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
