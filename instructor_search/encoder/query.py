"""``QueryEncoder``: queries embedded by a model's verified ONNX export alone (``tokenizers`` and
``onnxruntime``; no ``torch``, no ``transformers``), so that a one-off search starts fast.

What it needs is saved once per model beside the export, by :meth:`QueryEncoder.save` from an
:class:`~instructor_search.encoder.instructor.Instructor` that runs the export::

    <export folder>/query/
        tokenizer.json   the Instructor's own fast tokenizer, serialised as it runs
        head.onnx        the torch head exported: pooling without the instruction's tokens, Dense, Normalize
        query.json       model name and fingerprint, profile, sequence limit, pad token, dimension
        gate.json        the verdict: this encoder's calibration embeddings vs the Instructor's ONNX path

:meth:`QueryEncoder.open` serves a model only when the export's verdict (``gate.json`` beside
``model.onnx``) and this one are cached for exactly these files and passed; it trusts them
(nothing is embedded to check again). This one passes only within
:data:`~instructor_search.encoder.fidelity.EXACT_ATOL` of the Instructor's ONNX path: the same
tokens and the same head, so a query embeds as ``Instructor(backend="onnx")`` embeds it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from . import fidelity, onnx_backend
from .forward import padded_arrays, physical_cores, pooling_mask
from .inputs import InstructionTokens, prepare, token_budget_batches
from .instructor import MAX_TOKENS_PER_BATCH
from .profiles import DROP, ModelProfile

if TYPE_CHECKING:
    from .instructor import Instructor

logger = logging.getLogger(__name__)

#: The folder, inside a model's export folder, that holds what the query encoder needs.
BUNDLE = "query"
_FILES = ("tokenizer.json", "head.onnx", "query.json")


class QueryEncoder:
    """Embeds queries like the model's ONNX path, with onnxruntime and tokenizers only.

    It has the attributes a :class:`~instructor_search.search.retriever.Retriever` reads from
    its model (``model_name``, ``fingerprint``, ``dimension``, ``profile``, ``backend`` ...)
    and :meth:`encode` / :meth:`embed` for sentence embeddings. Get one with :meth:`open`.
    """

    backend = "onnx"
    precision = "fp32"

    def __init__(self, folder: Path, spec: dict[str, Any], num_threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        threads = num_threads or physical_cores()
        self.folder = folder
        self.model_name: str = spec["model"]
        self.fingerprint: str = spec["fingerprint"]
        self.dimension: int = spec["dimension"]
        self.max_seq_length: int = spec["max_seq_length"]
        self.profile = ModelProfile(**spec["profile"])
        self._lower_case = bool(spec["do_lower_case"])
        self._pad = int(spec["pad_token_id"])
        self.tokenizer = _Tokenizer(Tokenizer.from_file(str(folder / BUNDLE / "tokenizer.json")))
        self._instruction_tokens = InstructionTokens(self.tokenizer)
        self._threads = threads
        self._encoder = onnx_backend.session(folder / "model.onnx", threads)
        # The head (pooling, Dense, Normalize) is little work per query: waking a thread team
        # costs more than it saves (dense p50 at 1M chunks 13.5 -> 12.8 ms on 2 cores).
        self._head = onnx_backend.session(folder / BUNDLE / "head.onnx", 1)
        self._background: QueryEncoder | None = None

    @classmethod
    def open(
        cls,
        fingerprint: str,
        cache: str | os.PathLike[str] | None = None,
        num_threads: int | None = None,
    ) -> QueryEncoder | None:
        """The query encoder of the model with ``fingerprint``, or None (the reason logged at
        DEBUG) when no verified one is saved in the export cache."""
        folder = onnx_backend.export_folder(fingerprint, cache)
        reason = _unusable(folder, fingerprint)
        if reason is None:
            try:
                return cls(folder, fidelity.read_json(folder / BUNDLE / "query.json"), num_threads)
            except Exception as error:  # onnxruntime and tokenizers raise their own types
                reason = f"it could not be opened ({type(error).__name__}: {error})"
        logger.debug("No query encoder for %s: %s", fingerprint[:12], reason)
        return None

    @classmethod
    def saved(cls, model: Instructor) -> bool:
        """Whether a verified query encoder is saved for ``model``: one saved before is not
        opened (its ONNX Runtime sessions take ~0.25 s), else it is saved and checked now, as
        :meth:`save` does. What a build calls, so that the first search after it runs
        without torch."""
        folder = _export_of(model)
        if folder is not None and _unusable(folder, model.fingerprint) is None:
            return True
        return cls.save(model) is not None

    @classmethod
    def save(cls, model: Instructor) -> QueryEncoder | None:
        """Save what :meth:`open` needs for ``model`` (once: an existing verified one is
        returned) and check it; None when ``model`` runs no ONNX export, has a profile chosen
        by the caller (not the one its checkpoint gives), or the check fails (logged)."""
        folder = _export_of(model)
        if folder is None:
            return None
        runner, bundle = model._onnx, folder / BUNDLE
        if _unusable(folder, model.fingerprint) is None:
            return cls(folder, fidelity.read_json(bundle / "query.json"))
        judged = fidelity.read_json(bundle / "gate.json")
        if (bundle / "query.json").is_file() and judged.get("key") == _bundle_key(folder):
            return None  # these very files failed their check: not again on every start
        staging = folder / f".query-{os.getpid()}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            _write_bundle(model, staging)
            shutil.rmtree(bundle, ignore_errors=True)
            os.replace(staging, bundle)
            encoder = cls(folder, fidelity.read_json(bundle / "query.json"))
            verdict = fidelity.check(
                bundle / "gate.json",
                key=_bundle_key(folder),
                threshold=onnx_backend.FP32_MIN_COSINE,
                reference=lambda: model._embed_calibration(runner, bf16=False),
                candidate=lambda: encoder.encode(
                    fidelity.calibration_pairs(), normalize_embeddings=True
                ),
                label=f"the query encoder in {bundle}",
            )
        except Exception as error:  # the exporter, tokenizers and onnxruntime raise their own
            shutil.rmtree(staging, ignore_errors=True)
            logger.warning("Could not save the query encoder in %s: %s", bundle, error)
            return None
        return encoder if _exact(verdict) else None

    def background(self) -> QueryEncoder:
        """This encoder on one thread fewer (made once; itself on one thread), for queries
        embedded while the caller's thread computes too (a hybrid search's keyword side).

        On every core, each parallel step of the model waits for the core the caller holds: on
        2 cores a hybrid query at 1M chunks cost about the sum of its embedding and its keyword
        search instead of the larger of the two (``bench/RESULTS.md``)."""
        if self._threads <= 1:
            return self
        if self._background is None:
            other = copy.copy(self)
            other._threads = self._threads - 1
            other._encoder = onnx_backend.session(self.folder / "model.onnx", other._threads)
            self._background = other
        return self._background

    @property
    def uses_instructions(self) -> bool:
        """False when the profile drops instructions."""
        return self.profile.instruction_mode != DROP

    def __repr__(self) -> str:
        return (
            f"QueryEncoder(model={self.model_name!r}, profile={self.profile.family!r}, "
            f"dim={self.dimension}, folder={str(self.folder)!r})"
        )

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
    ) -> np.ndarray:
        """:meth:`Instructor.encode <instructor_search.encoder.instructor.Instructor.encode>`
        for sentence embeddings as float32 numpy arrays (tensors and token embeddings need
        an ``Instructor``); ``show_progress_bar`` and ``device`` are accepted and ignored."""
        if output_value != "sentence_embedding" or convert_to_tensor or not convert_to_numpy:
            raise InputError(
                "The query encoder gives sentence embeddings as numpy arrays only; load "
                f"Instructor({self.model_name!r}) for tensors or token embeddings"
            )
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        single = isinstance(sentences, str)
        prepared = prepare([sentences] if single else sentences, self.profile, self._lower_case)
        vectors = np.empty((len(prepared), self.dimension), dtype=np.float32)
        if not prepared:
            return vectors
        limit = self.max_seq_length
        ids = self.tokenizer([p.model_input for p in prepared], max_length=limit)["input_ids"]
        excluded = [self._instruction_tokens.count(p.instruction, limit) for p in prepared]
        order = sorted(range(len(prepared)), key=lambda i: -len(ids[i]))
        lengths = [len(row) for row in ids]
        for batch in token_budget_batches(order, lengths, batch_size, MAX_TOKENS_PER_BATCH):
            input_ids, attention = padded_arrays([ids[i] for i in batch], self._pad)
            feeds = {"input_ids": input_ids, "attention_mask": attention}
            hidden = self._encoder.run(["last_hidden_state"], feeds)[0]
            mask = pooling_mask(attention, [excluded[i] for i in batch])
            vectors[batch] = self._head.run(["embedding"], {"hidden": hidden, "mask": mask})[0]
        if normalize_embeddings:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors /= np.maximum(norms, 1e-12)  # as torch.nn.functional.normalize
        return vectors[0] if single else vectors

    def embed(
        self,
        texts: Sequence[str],
        instruction: str = "",
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Unit-length embeddings of ``texts``, each paired with ``instruction``."""
        pairs = [[instruction, text] for text in texts]
        return self.encode(pairs, batch_size=batch_size, normalize_embeddings=True)


class _Tokenizer:
    """A ``tokenizers.Tokenizer`` called as Instructor calls its transformers tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._limit: int | None = -1
        tokenizer.no_padding()

    def __call__(
        self,
        text: str | Sequence[str],
        truncation: str = "longest_first",
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> dict[str, Any]:
        if max_length != self._limit:
            if max_length:
                self._tokenizer.enable_truncation(max_length, strategy=truncation)
            else:
                self._tokenizer.no_truncation()
            self._limit = max_length
        if isinstance(text, str):
            return {
                "input_ids": self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
            }
        found = self._tokenizer.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [each.ids for each in found]}


def _export_of(model: Instructor) -> Path | None:
    """The export folder of ``model``'s ONNX path when a query encoder can be saved for it:
    the model runs ONNX, with the profile its checkpoint gives."""
    runner = model._onnx
    if runner is None or model.backend != "onnx" or not model.own_profile:
        return None
    return runner.folder


def _unusable(folder: Path, fingerprint: str) -> str | None:
    """Why the query encoder in ``folder`` cannot serve ``fingerprint`` (None: it can)."""
    missing = [
        name for name in ("onnxruntime", "tokenizers") if importlib.util.find_spec(name) is None
    ]
    if missing:
        return f"{', '.join(missing)} not installed"
    if not onnx_backend.export_is_current(folder, fingerprint):
        return f"no current ONNX export in {folder}"
    if not onnx_backend.gate_verdict(folder).get("passed"):
        return f"the export in {folder} has no passed verdict for its files"
    spec = fidelity.read_json(folder / BUNDLE / "query.json")
    if spec.get("fingerprint") != fingerprint:
        return f"no query encoder saved in {folder / BUNDLE}"
    verdict = fidelity.read_json(folder / BUNDLE / "gate.json")
    if verdict.get("key") != _bundle_key(folder) or not _exact(verdict):
        return f"the query encoder in {folder / BUNDLE} has no passed verdict for its files"
    return None


def _exact(verdict: dict[str, Any]) -> bool:
    return bool(verdict.get("passed")) and verdict.get("max_abs_diff", 1.0) <= fidelity.EXACT_ATOL


def _bundle_key(folder: Path) -> dict[str, Any]:
    """What the query encoder's verdict depends on: the export's key and its own files."""
    files = [folder / BUNDLE / name for name in _FILES]
    return {
        "export": onnx_backend.gate_key(folder),
        "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()},
    }


def _write_bundle(model: Instructor, folder: Path) -> None:
    """The tokenizer, the exported head and ``query.json`` of ``model`` into ``folder``."""
    model.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    _export_head(model, folder / "head.onnx")
    spec = {
        "model": model.model_name,
        "fingerprint": model.fingerprint,
        "dimension": model.dimension,
        "max_seq_length": model.max_seq_length,
        "profile": vars(model.profile),
        "do_lower_case": model.checkpoint.do_lower_case,
        "pad_token_id": model.tokenizer.pad_token_id or 0,
    }
    (folder / "query.json").write_text(json.dumps(spec, indent=1))


def _export_head(model: Instructor, path: Path) -> None:
    """``model.head`` (the torch code itself) as an ONNX graph: hidden states and pooling mask
    in, sentence embeddings out, for any batch and sequence length."""
    import torch

    from .forward import hidden_size

    class HeadModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = torch.nn.ModuleList(model.head.dense)

        def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model.head(hidden, mask)

    hidden = torch.randn((2, 8, hidden_size(model.encoder)))
    mask = torch.ones((2, 8), dtype=torch.int64)
    mask[1, 5:] = 0
    axes = {0: "batch", 1: "sequence"}
    with onnx_backend.quiet(), torch.no_grad():
        torch.onnx.export(
            HeadModule().eval(),
            (hidden, mask),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["hidden", "mask"],
            output_names=["embedding"],
            dynamic_axes={"hidden": axes, "mask": axes, "embedding": {0: "batch"}},
        )
