"""The sentence-transformers modules that follow the transformer: Pooling and Dense.

``Instructor`` runs them after the encoder, on either backend; instruction tokens are kept out
of pooling by the mask it passes. ``torch`` is imported inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    import torch

POOLING_MODES = ("cls_token", "max_tokens", "mean_tokens", "mean_sqrt_len_tokens")


def pooling_modes(folder: Path) -> tuple[str, ...]:
    """The pooling modes a Pooling module folder's ``config.json`` turns on (mean by default)."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    modes = tuple(mode for mode in POOLING_MODES if config.get(f"pooling_mode_{mode}"))
    unsupported = [
        key
        for key, on in config.items()
        if key.startswith("pooling_mode_")
        and on
        and key[len("pooling_mode_") :] not in POOLING_MODES
    ]
    if unsupported:
        raise ModelError(
            f"{config_file}: pooling {unsupported} is not supported; supported: {list(POOLING_MODES)}"
        )
    return modes or ("mean_tokens",)


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    """Token states → one vector per row, over the tokens where ``mask`` is 1, modes concatenated."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = []
    for mode in modes:
        if mode == "cls_token":
            pooled.append(hidden[:, 0])
        elif mode == "max_tokens":
            pooled.append(hidden.masked_fill(weights == 0, -1e9).max(dim=1).values)
        else:
            summed = (hidden * weights).sum(dim=1)
            counts = weights.sum(dim=1).clamp(min=1e-9)
            pooled.append(summed / (counts.sqrt() if mode == "mean_sqrt_len_tokens" else counts))
    return torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]


def load_dense(folder: Path) -> torch.nn.Module:
    """A Dense module folder as ``activation(x @ W.T + b)``, weights from safetensors or a
    ``weights_only`` torch pickle."""
    import torch

    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text())
        if (folder / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(folder / "model.safetensors"))
        else:
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"Could not load the Dense module in {folder}: {error}") from error
    activations = {
        "torch.nn.modules.linear.Identity": torch.nn.Identity,
        "torch.nn.modules.activation.Tanh": torch.nn.Tanh,
        "torch.nn.modules.activation.ReLU": torch.nn.ReLU,
        "torch.nn.modules.activation.GELU": torch.nn.GELU,
    }
    name = config.get("activation_function", "torch.nn.modules.linear.Identity")
    if name not in activations:
        raise ModelError(
            f"{config_file}: activation {name!r} is not supported; supported: {sorted(activations)}"
        )
    linear = torch.nn.Linear(
        config["in_features"], config["out_features"], bias=config.get("bias", True)
    )
    linear.load_state_dict(
        {key.removeprefix("linear."): value.float() for key, value in state.items()}
    )
    # sentence-transformers' Dense module: activation(x @ W.T + b)
    return torch.nn.Sequential(linear, activations[name]()).eval()
