"""Trigger tokens: a tokenizer that knows them and an embedding layer that looks them up.

Neither the pipeline's tokenizer nor its embedding table is modified. The pipeline gets a copy of
the tokenizer with the tokens added, and the text encoder's input embedding is wrapped by
:class:`ConceptEmbedding`, which answers the new ids from a small table of its own and every
other id from the original layer. Removing concepts puts the original objects back, which is
what makes the pipeline bit-identical afterwards — and avoids resizing a 49,408-row table.

The copy does not copy the vocabulary. A tokenizer backed by the ``tokenizers`` library (every
CLIP tokenizer of transformers 5) keeps its vocabulary and merges in a Rust model that the copy
shares, read-only, with the original; the copy has its own added-token table (the original's
added tokens, re-added with the same ids, checked, then the trigger tokens), its own padding and
truncation settings, and deep copies of the Python-side attributes except large read-only tables
(the merges list). So a new token set costs about a millisecond instead of the ~190 ms a
``copy.deepcopy`` of a 49,408-token tokenizer takes; other tokenizers are deep-copied. The last
copy per tokenizer is also cached, so re-applying the same tokens costs nothing.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .errors import PerfusionRuntimeError, RuntimeErrorCode

__all__ = ["ConceptEmbedding", "extended_tokenizer", "in_vocabulary"]

_COPIES: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()
#: Python-side containers at least this long are shared with the copy, not copied (read-only).
_SHARED_LENGTH = 1000


def in_vocabulary(tokenizer: Any, token: str) -> bool:
    """True when ``tokenizer`` already reads ``token`` as one token of its own: a word of its
    vocabulary (``teapot``) or a token added before (a textual inversion's ``<cat-toy>``)."""
    return len(tokenizer(token, add_special_tokens=False).input_ids) == 1


def _added_tokens(backend: Any) -> list[tuple[int, str]]:
    return [(i, repr(token)) for i, token in sorted(backend.get_added_tokens_decoder().items())]


def _backend_sharing_model(backend: Any) -> Any | None:
    """A ``tokenizers.Tokenizer`` that shares ``backend``'s model, normalizer, pre-tokenizer,
    post-processor and decoder and has its own copy of the added tokens, padding and truncation;
    None when it would differ from ``backend`` (checked: the same added tokens with the same ids).
    """
    from tokenizers import Tokenizer

    if type(backend) is not Tokenizer:
        return None
    clone = Tokenizer(backend.model)
    for name in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        component = getattr(backend, name)
        if component is not None:
            setattr(clone, name, component)
    for _, token in sorted(backend.get_added_tokens_decoder().items()):
        (clone.add_special_tokens if token.special else clone.add_tokens)([token])
    if _added_tokens(clone) != _added_tokens(backend):
        return None
    if backend.truncation is not None:
        clone.enable_truncation(**backend.truncation)
    if backend.padding is not None:
        clone.enable_padding(**backend.padding)
    clone.encode_special_tokens = backend.encode_special_tokens
    return clone


def _copy(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` whose added tokens can change without touching the original's,
    sharing the vocabulary where the backend allows (module docstring)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    clone = None if backend is None else _backend_sharing_model(backend)
    if clone is None:
        return copy.deepcopy(tokenizer)
    memo: dict[int, Any] = {id(backend): clone}
    for value in vars(tokenizer).values():
        if isinstance(value, list | dict | tuple) and len(value) >= _SHARED_LENGTH:
            memo[id(value)] = value
    return copy.deepcopy(tokenizer, memo)


def extended_tokenizer(tokenizer: Any, tokens: Sequence[str]) -> Any:
    """A copy of ``tokenizer`` that also knows ``tokens``, with ids ``len(tokenizer)``,
    ``len(tokenizer) + 1``, … in order; ``tokenizer`` itself is not changed. The last copy per
    tokenizer is cached and reused for the same tokens.
    """
    key = (tuple(tokens), len(tokenizer))
    cached = _COPIES.get(tokenizer)
    if cached is None or cached[0] != key:
        extended = _copy(tokenizer)
        extended.add_tokens(list(tokens))
        ids = [extended.convert_tokens_to_ids(token) for token in tokens]
        if ids != list(range(len(tokenizer), len(tokenizer) + len(tokens))):
            raise PerfusionRuntimeError(
                RuntimeErrorCode.UNSUPPORTED_PIPELINE,
                f"the tokenizer gave the new tokens ids {ids}, not the next free ones",
            )
        _COPIES[tokenizer] = cached = (key, extended)
    return cached[1]


class ConceptEmbedding(nn.Module):
    """An input-embedding layer: ids from ``first_id`` on read ``rows``, the rest ``base``.

    ``base`` is the text encoder's original ``nn.Embedding`` (not copied); ``rows`` [k, d] is a
    buffer, so it follows the encoder through ``.to()`` and model CPU offload. Rows that require
    grad (training's trainable rows) are kept as given, in their own dtype, and cast on use.
    """

    def __init__(self, base: nn.Embedding, first_id: int, rows: Tensor) -> None:
        super().__init__()
        self.base = base
        self.first_id = first_id
        if not rows.requires_grad:
            rows = rows.to(device=base.weight.device, dtype=base.weight.dtype)
        self.register_buffer("rows", rows, persistent=False)

    @property
    def weight(self) -> Tensor:
        """The original table (code that reads ``get_input_embeddings().weight`` still works)."""
        return self.base.weight

    @property
    def num_embeddings(self) -> int:
        """The number of ids this layer answers."""
        return self.first_id + self.rows.shape[0]

    def forward(self, ids: Tensor) -> Tensor:
        """Embed ``ids``: a row of ``rows`` for the added tokens, the original layer otherwise."""
        added = ids >= self.first_id
        embedded = self.base(torch.where(added, 0, ids))
        extra = self.rows[torch.where(added, ids - self.first_id, 0)].to(embedded.dtype)
        return torch.where(added.unsqueeze(-1), extra, embedded)
