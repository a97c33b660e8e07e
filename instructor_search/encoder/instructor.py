"""``Instructor``: load a checkpoint and encode ``[instruction, text]`` pairs.

``Instructor.encode`` keeps the signature and the behaviour of the reference
``InstructorEmbedding.INSTRUCTOR.encode`` (1.0.1), so code written for it runs unchanged,
and gives the same vectors (within float noise); it runs on ``transformers`` + ``torch``
directly. ``torch`` and ``transformers`` are imported when a model is loaded, not before.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, ModelError
from . import fidelity, onnx_backend, profiles
from .checkpoints import Checkpoint, ModuleSpec, resolve
from .precision import BF16_MIN_BATCH_TOKENS, store_linear_weights_in_bf16, use_bf16
from .st_modules import load_dense, pool, pooling_modes

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
_PROGRESS_MIN_INPUTS = 1000
#: Default cap on padded tokens per batch (rows x longest row), measured in bench/encode.py.
MAX_TOKENS_PER_BATCH = 8192


@dataclass(frozen=True)
class _Prepared:
    """One input after the reference's string rules: the model input and the instruction."""

    model_input: str
    instruction: str  # the stripped instruction whose tokens are excluded from pooling ("" = none)
    sort_key: int  # the reference sorts by the character length of the text


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


class Instructor:
    """An INSTRUCTOR-style sentence encoder.

    ``model`` is a hub id (``hkunlp/instructor-large``, downloaded only when named), a local
    folder in the sentence-transformers layout, or ``None`` for the bundled offline default
    (all-MiniLM-L6-v2). ``profile`` (a :class:`~instructor_search.encoder.profiles.ModelProfile` or a
    family name) and ``instruction_mode`` override how instructions are used.

    ``backend``: ``"torch"``, ``"onnx"`` (ONNX Runtime, CPU) or ``"auto"`` (ONNX when
    onnxruntime is installed and the export passes the fidelity gate, else torch, with one
    logged line). Exports are cached per model under ``onnx_cache``
    (see :mod:`instructor_search.encoder.onnx_backend`). ``precision``: ``"auto"`` runs large batches
    on the torch encoder in bf16 where the CPU computes bf16 natively and the fidelity gate
    passes (see :mod:`instructor_search.encoder.precision`), ``"fp32"`` never does (bit-for-bit the
    reference's arithmetic), ``"bf16"`` asks for it on any CPU. Batches hold at most
    ``batch_size`` inputs and ``max_tokens_per_batch`` padded tokens.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Checkpoint | None = None,
        device: str | None = None,
        *,
        profile: profiles.ModelProfile | str | None = None,
        instruction_mode: str | None = None,
        cache_folder: str | None = None,
        num_threads: int | None = None,
        backend: str = "auto",
        onnx_cache: str | os.PathLike[str] | None = None,
        max_tokens_per_batch: int = MAX_TOKENS_PER_BATCH,
        precision: str = "auto",
    ) -> None:
        import torch

        self.checkpoint: Checkpoint = resolve(model, cache_folder)
        if isinstance(profile, str):
            profile = profiles.get_profile(profile)
        profile = profile or profiles.profile_for(self.checkpoint.name, self.checkpoint.folder.name)
        self.profile = profile.with_mode(instruction_mode) if instruction_mode else profile
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if num_threads or torch.get_num_threads() < physical_cores():
            torch.set_num_threads(num_threads or physical_cores())
        self.tokenizer, self.encoder = _load_transformer(self.checkpoint.folder, self.device)
        self._pooling_modes = ("mean_tokens",)
        self._dense: list[torch.nn.Module] = []
        self._normalize = False
        for module in self.checkpoint.modules[1:]:
            self._add_module(module)
        self.max_seq_length = _initial_max_seq_length(self.checkpoint, self.profile, self.encoder)
        self.max_tokens_per_batch = max_tokens_per_batch
        self._instruction_lengths: dict[tuple[str, int], int] = {}
        self._onnx: onnx_backend.OnnxEncoder | None = None
        self._bf16 = False
        if backend == "onnx" and precision == "bf16":
            raise InputError("precision='bf16' runs on the torch encoder: use backend='auto'")
        reference = functools.cache(lambda: self._embed_calibration(None, bf16=False))
        self._onnx = onnx_backend.select(
            backend,
            self.encoder,
            fingerprint=self.fingerprint,
            device=self.device,
            cache=onnx_cache,
            num_threads=num_threads or physical_cores(),
            reference=reference,
            embed=lambda runner: self._embed_calibration(runner, bf16=False),
        )
        self._bf16 = backend != "onnx" and use_bf16(
            precision,
            device=self.device,
            folder=onnx_backend.export_folder(self.fingerprint, onnx_cache),
            fingerprint=self.fingerprint,
            reference=reference,
            candidate=lambda: self._embed_calibration(None, bf16=True),
        )
        if self._bf16:  # from here on the torch encoder runs in bf16 only
            store_linear_weights_in_bf16(self.encoder)

    # -- loading ------------------------------------------------------------------------------

    def _add_module(self, module: ModuleSpec) -> None:
        if module.kind == "pooling":
            self._pooling_modes = pooling_modes(module.folder)
        elif module.kind == "dense":
            self._dense.append(load_dense(module.folder).to(self.device))
        elif module.kind == "normalize":
            self._normalize = True

    @property
    def model_name(self) -> str:
        """The hub id or folder the model was loaded from."""
        return self.checkpoint.name

    @property
    def fingerprint(self) -> str:
        """A stable hash of the model's configuration and weights, stored in every index."""
        return self.checkpoint.fingerprint

    @property
    def dimension(self) -> int:
        """The length of a sentence embedding."""
        if self._dense:
            return int(self._dense[-1][0].out_features)
        return _hidden_size(self.encoder) * len(self._pooling_modes)

    @property
    def backend(self) -> str:
        """The backend that runs the encoder: ``"onnx"`` or ``"torch"``."""
        return "onnx" if self._onnx is not None and self.device == "cpu" else "torch"

    @property
    def precision(self) -> str:
        """``"bf16"`` when large batches run in bf16 (see :mod:`.precision`), else ``"fp32"``."""
        return "bf16" if self._bf16 else "fp32"

    @property
    def uses_instructions(self) -> bool:
        """False when the profile drops instructions."""
        return self.profile.instruction_mode != profiles.DROP

    def __repr__(self) -> str:
        return (
            f"Instructor(model={self.model_name!r}, profile={self.profile.family!r}, "
            f"instruction_mode={self.profile.instruction_mode!r}, dim={self.dimension}, "
            f"max_seq_length={self.max_seq_length}, device={self.device!r}, backend={self.backend!r}, "
            f"precision={self.precision!r})"
        )

    # -- encode -------------------------------------------------------------------------------

    def encode(
        self,
        sentences: str | Sequence[Any],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool = False,
    ) -> Any:
        """Embed ``[instruction, text]`` pairs (or bare strings), as the reference INSTRUCTOR does.

        A single string gives one 1-D vector; a list gives a float32 array ``(n, dim)``
        (``convert_to_tensor``: a tensor; neither: a list of tensors).
        ``output_value="token_embeddings"`` gives, per input, its tokens' hidden states.
        """
        import torch

        if output_value not in _OUTPUT_VALUES:
            raise InputError(f"output_value {output_value!r} must be one of {list(_OUTPUT_VALUES)}")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        single = isinstance(sentences, str)
        prepared = self._prepare([sentences] if single else sentences)
        if convert_to_tensor:
            convert_to_numpy = False
        if not prepared:
            return self._empty(output_value, convert_to_numpy, convert_to_tensor)
        device = device or self.device
        self._move_to(device)

        input_ids = self.tokenizer(
            [p.model_input for p in prepared],
            truncation="longest_first",
            max_length=self.max_seq_length,
            add_special_tokens=True,
        )["input_ids"]
        excluded = [self._instruction_length(p.instruction) for p in prepared]
        # Longest first (by token length, so that each batch pads as little as possible), cut
        # by count and by padded tokens: batch composition changes results only by float noise.
        order = sorted(range(len(prepared)), key=lambda i: -len(input_ids[i]))
        batches = _token_budget_batches(
            order, [len(ids) for ids in input_ids], batch_size, self.max_tokens_per_batch
        )
        results: list[Any] = [None] * len(prepared)
        with torch.inference_mode():
            for batch in self._progress(batches, show_progress_bar, len(prepared)):
                outputs = self._forward([input_ids[i] for i in batch], [excluded[i] for i in batch])
                rows = self._collect(outputs, output_value, normalize_embeddings)
                for position, row in zip(batch, rows):
                    results[position] = row

        if output_value == "sentence_embedding":
            if convert_to_tensor:
                results = torch.stack(results)
            elif convert_to_numpy:
                results = np.stack([row.float().numpy() for row in results]).astype(np.float32)
        return results[0] if single else results

    def _prepare(self, sentences: Sequence[Any]) -> list[_Prepared]:
        if not isinstance(sentences, (list, tuple)):
            raise InputError(
                f"sentences must be a string, a list of strings or a list of [instruction, text] "
                f"pairs, got {type(sentences).__name__}"
            )
        if not sentences:
            return []
        pairs = isinstance(sentences[0], (list, tuple))
        prepared = []
        for position, item in enumerate(sentences):
            if pairs != isinstance(item, (list, tuple)):
                raise InputError(
                    f"sentences[{position}] is {type(item).__name__} but sentences[0] is "
                    f"{type(sentences[0]).__name__}: give all [instruction, text] pairs or all strings"
                )
            prepared.append(
                self._prepare_pair(item, position) if pairs else self._prepare_text(item, position)
            )
        return prepared

    def _prepare_text(self, text: Any, position: int) -> _Prepared:
        if not isinstance(text, str):
            raise InputError(f"sentences[{position}] must be a str, got {type(text).__name__}")
        model_input = text.strip()
        if self.checkpoint.do_lower_case:
            model_input = model_input.lower()
        return _Prepared(model_input, "", len(text))

    def _prepare_pair(self, pair: Sequence[Any], position: int) -> _Prepared:
        if len(pair) < 2 or not isinstance(pair[0], str) or not isinstance(pair[1], str):
            raise InputError(
                f"sentences[{position}] must be [instruction, text] with two strings, got {pair!r}"
            )
        instruction, text = pair[0], pair[1].strip()
        mode = self.profile.instruction_mode
        if mode == profiles.DROP:
            model_input, instruction = text, ""
        else:
            model_input = (instruction + text).strip()
            instruction = instruction.strip() if mode == profiles.EXCLUDE_FROM_POOLING else ""
        if self.checkpoint.do_lower_case:
            model_input, instruction = model_input.lower(), instruction.lower()
        return _Prepared(model_input, instruction, len(text))

    def _instruction_length(self, instruction: str) -> int:
        """Leading tokens excluded from pooling: the reference's count, with its "≤ 1 → 0" rule."""
        if not instruction:
            return 0
        key = (instruction, self.max_seq_length)
        if key not in self._instruction_lengths:
            ids = self.tokenizer(
                instruction, truncation="longest_first", max_length=self.max_seq_length
            )["input_ids"]
            count = len(ids) - 1
            self._instruction_lengths[key] = count if count > 1 else 0
        return self._instruction_lengths[key]

    def _forward(self, ids: list[list[int]], excluded: list[int]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = np.full((len(ids), width), pad, dtype=np.int64)
        attention = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            attention[row, : len(tokens)] = 1
        input_tensor = torch.from_numpy(input_ids).to(self.device)
        attention_tensor = torch.from_numpy(attention).to(self.device)
        # Small batches (queries) run in fp32 on ONNX Runtime when it is loaded: faster there.
        bf16 = self.precision == "bf16" and (
            self._onnx is None or input_ids.size >= BF16_MIN_BATCH_TOKENS
        )
        if self.backend == "onnx" and not bf16:
            hidden = self._onnx(input_tensor, attention_tensor)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                hidden = self.encoder(input_ids=input_tensor, attention_mask=attention_tensor)[0]
            hidden = hidden.float()
        pooling_mask = attention_tensor.clone()
        for row, count in enumerate(excluded):
            if count:
                pooling_mask[row, : min(count, width)] = 0
        embedding = pool(hidden, pooling_mask, self._pooling_modes)
        for dense in self._dense:
            embedding = dense(embedding)
        if self._normalize:
            embedding = torch.nn.functional.normalize(embedding, p=2, dim=1)
        return {
            "input_ids": input_tensor,
            "attention_mask": pooling_mask,
            "context_masks": torch.tensor(excluded),
            "token_embeddings": hidden,
            "sentence_embedding": embedding,
        }

    def _collect(
        self, outputs: dict[str, torch.Tensor], output_value: str | None, normalize: bool
    ) -> list[Any]:
        import torch

        if output_value == "sentence_embedding":
            embedding = outputs["sentence_embedding"]
            if normalize:
                embedding = torch.nn.functional.normalize(embedding, p=2, dim=1)
            return list(embedding.detach().cpu())
        if output_value == "token_embeddings":
            rows = []
            for hidden, mask in zip(outputs["token_embeddings"], outputs["attention_mask"]):
                real = torch.nonzero(mask).flatten()
                last = int(real[-1]) if len(real) else 0
                rows.append(hidden[: last + 1].detach().cpu())
            return rows
        count = outputs["input_ids"].shape[0]
        return [
            {name: value[row].detach().cpu() for name, value in outputs.items()}
            for row in range(count)
        ]

    def _progress(self, batches: list[list[int]], show: bool | None, count: int) -> Any:
        if show is None:
            show = count >= _PROGRESS_MIN_INPUTS and sys.stderr.isatty()
        if not show:
            return batches
        from tqdm.auto import tqdm

        return tqdm(batches, desc="Batches", unit="batch", file=sys.stderr)

    def _empty(
        self, output_value: str | None, convert_to_numpy: bool, convert_to_tensor: bool
    ) -> Any:
        if output_value != "sentence_embedding":
            return []
        if convert_to_tensor:
            import torch

            return torch.empty((0, self.dimension))
        return np.empty((0, self.dimension), dtype=np.float32) if convert_to_numpy else []

    def _move_to(self, device: str) -> None:
        if device != self.device and self._bf16:
            raise InputError(
                f"This model runs in bf16 on the CPU and cannot move to {device}: load it with "
                f"Instructor(..., device={device!r}) or precision='fp32'"
            )
        if device != self.device:
            self.encoder.to(device)
            for dense in self._dense:
                dense.to(device)
            self.device = device

    def _embed_calibration(self, runner: onnx_backend.OnnxEncoder | None, bf16: bool) -> np.ndarray:
        """The fidelity gate's calibration pairs embedded with ``runner`` (None: the torch
        encoder, in bf16 if ``bf16``)."""
        saved = self._onnx, self._bf16
        self._onnx, self._bf16 = runner, bf16
        try:
            return self.encode(
                fidelity.calibration_pairs(), show_progress_bar=False, normalize_embeddings=True
            )
        finally:
            self._onnx, self._bf16 = saved

    # -- retrieval helpers ----------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        instruction: str = "",
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Unit-length float32 embeddings of ``texts``, each paired with ``instruction``.

        The profile decides what the instruction does (excluded from pooling, pooled, or dropped).
        """
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        return self.encode(
            [[instruction, text] for text in texts],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            normalize_embeddings=True,
        )

    def max_text_tokens(self, instruction: str = "") -> int:
        """How many text tokens fit beside ``instruction`` and the special tokens in one input."""
        special = len(self.tokenizer("")["input_ids"])
        reserved = 0
        if self.uses_instructions and instruction.strip():
            # +1: the instruction and the text can merge into one token less or more at the seam.
            reserved = (
                len(self.tokenizer(instruction.strip(), add_special_tokens=False)["input_ids"]) + 1
            )
        return self.max_seq_length - special - reserved


def _token_budget_batches(
    order: list[int], lengths: list[int], batch_size: int, max_tokens: int
) -> list[list[int]]:
    """Cut ``order`` (longest first) into batches of at most ``batch_size`` inputs and
    ``max_tokens`` padded tokens (rows x the first, longest row); never an empty batch."""
    batches: list[list[int]] = []
    for index in order:
        if batches:
            batch = batches[-1]
            if len(batch) < batch_size and (len(batch) + 1) * lengths[batch[0]] <= max_tokens:
                batch.append(index)
                continue
        batches.append([index])
    return batches


def _load_transformer(folder: Any, device: str) -> tuple[Any, Any]:
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


def _hidden_size(encoder: Any) -> int:
    config = encoder.config
    return int(getattr(config, "d_model", None) or config.hidden_size)


def _initial_max_seq_length(
    checkpoint: Checkpoint, profile: profiles.ModelProfile, encoder: Any
) -> int:
    limit = profile.max_seq_length or checkpoint.max_seq_length or 512
    positions = getattr(encoder.config, "max_position_embeddings", None)
    return min(limit, positions) if positions else limit
