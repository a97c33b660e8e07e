"""The torch side of the forward pass: loading the transformer, padding token ids, and the
sentence-transformers head after the encoder (pooling without the instruction's tokens, Dense,
Normalize). Inference runs it under ``torch.inference_mode``; training runs the same code with
gradients on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError
from .checkpoints import Checkpoint, ModuleSpec
from .profiles import ModelProfile
from .st_modules import load_dense, pool, pooling_modes

if TYPE_CHECKING:
    import torch


@dataclass
class Head:
    """What follows the encoder: pooling (with the instruction's tokens masked out), the Dense
    layers, and L2 normalisation, as the checkpoint's ``modules.json`` lists them."""

    pooling_modes: tuple[str, ...] = ("mean_tokens",)
    dense: list[Any] = field(default_factory=list)
    normalize: bool = False

    @classmethod
    def from_modules(cls, modules: list[ModuleSpec], device: str) -> Head:
        head = cls()
        for module in modules:
            if module.kind == "pooling":
                head.pooling_modes = pooling_modes(module.folder)
            elif module.kind == "dense":
                head.dense.append(load_dense(module.folder).to(device))
            elif module.kind == "normalize":
                head.normalize = True
        return head

    def __call__(self, hidden: torch.Tensor, pooling_mask: torch.Tensor) -> torch.Tensor:
        import torch

        embedding = pool(hidden, pooling_mask, self.pooling_modes)
        for dense in self.dense:
            embedding = dense(embedding)
        if self.normalize:
            embedding = torch.nn.functional.normalize(embedding, p=2, dim=1)
        return embedding

    def to(self, device: str) -> None:
        for dense in self.dense:
            dense.to(device)


def padded(
    ids: list[list[int]], pad_token_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` tensors for rows of token ids, right-padded."""
    import torch

    input_ids, attention = padded_arrays(ids, pad_token_id)
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(attention).to(device)


def padded_arrays(ids: list[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`padded` as int64 numpy arrays (what ONNX Runtime takes)."""
    width = max(len(row) for row in ids)
    input_ids = np.full((len(ids), width), pad_token_id, dtype=np.int64)
    attention = np.zeros((len(ids), width), dtype=np.int64)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = tokens
        attention[row, : len(tokens)] = 1
    return input_ids, attention


def pooling_mask(attention: Any, excluded: list[int]) -> Any:
    """The attention mask (a tensor or a numpy array) with each row's first ``excluded[row]``
    tokens (its instruction) off."""
    mask = attention.clone() if hasattr(attention, "clone") else attention.copy()
    width = mask.shape[1]
    for row, count in enumerate(excluded):
        if count:
            mask[row, : min(count, width)] = 0
    return mask


def physical_cores() -> int:
    """Physical CPU cores this process may use (one thread per core is fastest for inference).

    The CPUs of ``os.sched_getaffinity`` counted once per core (hyper-threads share one), as
    Linux's sysfs topology tells; elsewhere the logical CPU count.
    """
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with (
                open(f"{topology}/physical_package_id") as package,
                open(f"{topology}/core_id") as core,
            ):
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def load_transformer(folder: Any, device: str) -> tuple[Any, Any]:
    """The fast tokenizer and the fp32 encoder (T5's encoder alone for T5 checkpoints)."""
    import torch
    import transformers

    progress_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar per load
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        config = transformers.AutoConfig.from_pretrained(str(folder))
        model_class = (
            transformers.T5EncoderModel
            if config.model_type in ("t5", "mt5", "umt5")
            else transformers.AutoModel
        )
        encoder = model_class.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise ModelError(f"Could not load the model in {folder}: {error}") from error
    finally:
        if progress_bars:
            transformers.utils.logging.enable_progress_bar()
    if not tokenizer.is_fast:
        raise ModelError(f"{folder} has no fast tokenizer (tokenizer.json); it is required.")
    return tokenizer, encoder.to(device).eval()


def hidden_size(encoder: Any) -> int:
    config = encoder.config
    return int(getattr(config, "d_model", None) or config.hidden_size)


def initial_max_seq_length(checkpoint: Checkpoint, profile: ModelProfile, encoder: Any) -> int:
    limit = profile.max_seq_length or checkpoint.max_seq_length or 512
    positions = getattr(encoder.config, "max_position_embeddings", None)
    return min(limit, positions) if positions else limit
