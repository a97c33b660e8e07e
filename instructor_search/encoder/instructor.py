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
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from . import fidelity, onnx_backend, profiles
from .checkpoints import Checkpoint, resolve
from .forward import (
    Head,
    hidden_size,
    initial_max_seq_length,
    load_transformer,
    padded,
    physical_cores,
    pooling_mask,
)
from .inputs import InstructionTokens, Prepared, prepare, token_budget_batches
from .precision import BF16_MIN_BATCH_TOKENS, store_linear_weights_in_bf16, use_bf16

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
_PROGRESS_MIN_INPUTS = 1000
#: Default cap on padded tokens per batch (rows x longest row), measured in bench/encode.py.
MAX_TOKENS_PER_BATCH = 8192


class Instructor:
    """An INSTRUCTOR-style sentence encoder.

    ``model`` is a hub id (``hkunlp/instructor-large``, downloaded only when named), a local
    folder in the sentence-transformers layout, or ``None`` for the bundled offline default
    (all-MiniLM-L6-v2). How it uses instructions comes from the checkpoint
    (:func:`~instructor_search.encoder.profiles.profile_for`: the folder's
    ``instructor-search.json``, its architecture, then its name); ``profile`` (a
    :class:`~instructor_search.encoder.profiles.ModelProfile` or a family name) and
    ``instruction_mode`` override that.

    **Exact by default.** With the default ``precision="fp32"`` :meth:`encode` gives the
    reference INSTRUCTOR vectors within :data:`~instructor_search.encoder.fidelity.EXACT_ATOL`
    (1e-5) at every batch size: the torch encoder in fp32, or its ONNX export where that was
    measured within 1e-5 of it. ``precision="auto"`` is the gated fast path, what builds,
    ``eval`` and the :class:`~instructor_search.search.retriever.Retriever` use: large batches
    in bf16 on CPUs that compute it natively once the fidelity gate passes (see
    :mod:`instructor_search.encoder.precision`; cosine >= 0.999 to fp32, differences ~1e-3), and
    the ONNX export once it passes its own gate (cosine >= 0.9999). ``"bf16"`` asks for bf16 on
    any CPU.

    ``backend``: ``"torch"``, ``"onnx"`` (ONNX Runtime, CPU) or ``"auto"`` (ONNX when
    onnxruntime is installed and the export passes its gate, and for ``precision="fp32"`` is
    within 1e-5; else torch, with one logged line). Exports are cached per model under
    ``onnx_cache`` (see :mod:`instructor_search.encoder.onnx_backend`). Batches hold at most
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
        precision: str = "fp32",
    ) -> None:
        import torch

        self.checkpoint: Checkpoint = resolve(model, cache_folder)
        if isinstance(profile, str):
            profile = profiles.get_profile(profile)
        #: True when the profile is the one the checkpoint gives (no ``profile=``/``instruction_mode=``).
        self.own_profile = profile is None and instruction_mode is None
        profile = profile or profiles.profile_for(self.checkpoint)
        self.profile = profile.with_mode(instruction_mode) if instruction_mode else profile
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if num_threads or torch.get_num_threads() < physical_cores():
            torch.set_num_threads(num_threads or physical_cores())
        self.tokenizer, self.encoder = load_transformer(self.checkpoint.folder, self.device)
        self.head = Head.from_modules(self.checkpoint.modules[1:], self.device)
        self.max_seq_length = initial_max_seq_length(self.checkpoint, self.profile, self.encoder)
        self.max_tokens_per_batch = max_tokens_per_batch
        self._instruction_tokens = InstructionTokens(self.tokenizer)
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
            exact=precision == "fp32",
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
        if self.head.dense:
            return int(self.head.dense[-1][0].out_features)
        return hidden_size(self.encoder) * len(self.head.pooling_modes)

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
        prepared = prepare(
            [sentences] if single else sentences, self.profile, self.checkpoint.do_lower_case
        )
        if convert_to_tensor:
            convert_to_numpy = False
        if not prepared:
            return self._empty(output_value, convert_to_numpy, convert_to_tensor)
        device = device or self.device
        self._move_to(device)

        input_ids, excluded = self._tokenize(prepared)
        # Longest first (by token length, so that each batch pads as little as possible), cut
        # by count and by padded tokens: batch composition changes results only by float noise.
        order = sorted(range(len(prepared)), key=lambda i: -len(input_ids[i]))
        batches = token_budget_batches(
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

    def tokenize(self, sentences: Sequence[Any]) -> tuple[list[list[int]], list[int]]:
        """Token ids of each input and how many of its leading tokens are its instruction's
        (excluded from pooling): what :meth:`encode` feeds the model. Training uses it too."""
        return self._tokenize(prepare(sentences, self.profile, self.checkpoint.do_lower_case))

    def _tokenize(self, prepared: list[Prepared]) -> tuple[list[list[int]], list[int]]:
        input_ids = self.tokenizer(
            [p.model_input for p in prepared],
            truncation="longest_first",
            max_length=self.max_seq_length,
            add_special_tokens=True,
        )["input_ids"]
        excluded = [
            self._instruction_tokens.count(p.instruction, self.max_seq_length) for p in prepared
        ]
        return input_ids, excluded

    def forward(self, ids: list[list[int]], excluded: list[int]) -> torch.Tensor:
        """Sentence embeddings of tokenized inputs (see :meth:`tokenize`) on the fp32 torch
        encoder, with gradients when torch has them on (training): the head ``encode`` uses."""
        if self.backend != "torch" or self.precision != "fp32":
            raise InputError(
                "forward() runs the fp32 torch encoder: load the model with "
                "Instructor(..., backend='torch', precision='fp32')"
            )
        return self._forward(ids, excluded)["sentence_embedding"]

    def _forward(self, ids: list[list[int]], excluded: list[int]) -> dict[str, torch.Tensor]:
        import torch

        input_tensor, attention_tensor = padded(ids, self.tokenizer.pad_token_id or 0, self.device)
        # Small batches (queries) run in fp32 on ONNX Runtime when it is loaded: faster there.
        bf16 = self.precision == "bf16" and (
            self._onnx is None or input_tensor.numel() >= BF16_MIN_BATCH_TOKENS
        )
        if self.backend == "onnx" and not bf16:
            hidden = self._onnx(input_tensor, attention_tensor)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                hidden = self.encoder(input_ids=input_tensor, attention_mask=attention_tensor)[0]
            hidden = hidden.float()
        mask = pooling_mask(attention_tensor, excluded)
        embedding = self.head(hidden, mask)
        return {
            "input_ids": input_tensor,
            "attention_mask": mask,
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
            self.head.to(device)
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
