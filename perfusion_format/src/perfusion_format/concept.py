"""The Concept: a validated Perfusion concept held in memory (spec §3).

A :class:`Concept` can only exist in a valid state: its constructor checks the metadata, the
tensor set and shapes against the base family, finiteness, the gate direction, and that every
embedded signature holds. Build one from arrays with :func:`create_concept`, from bytes with
:func:`perfusion_format.loads`, and add signatures with :func:`perfusion_format.sign`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .container import DTYPES, DType, RawTensor
from .digest import DIGEST, weights_digest
from .errors import ErrorCode, FormatError, SignatureError
from .families import FAMILIES, Family
from .signing import Signature
from .strict_json import StrictJSONError, has_lone_surrogate, loads_strict

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MEDIA_TYPE",
    "Concept",
    "Gate",
    "create_concept",
    "to_float32",
]

FORMAT_NAME = "perfusion-concept"
FORMAT_VERSION = "1.0"
MEDIA_TYPE = "application/vnd.perfusion.concept.v1+safetensors"
FILE_SUFFIX = ".perfusion.safetensors"
SUPPORTED_MAJOR = 1


class Key:
    """Metadata keys defined by format version 1.0 (spec §3.2)."""

    FORMAT = "perfusion.format"
    VERSION = "perfusion.version"
    SUPERCLASS = "perfusion.superclass"
    BASE_FAMILY = "perfusion.base_family"
    BASE_FINGERPRINT = "perfusion.base_fingerprint"
    INFERENCE_BETA = "perfusion.inference_beta"
    INFERENCE_TAU = "perfusion.inference_tau"
    TRAINING_BETA = "perfusion.training_beta"
    TRAINING_TAU = "perfusion.training_tau"
    TRAINING = "perfusion.training"
    SIGNATURES = "perfusion.signatures"
    MODELSPEC = "modelspec.sai_model_spec"
    ARCHITECTURE = "modelspec.architecture"
    IMPLEMENTATION = "modelspec.implementation"
    TITLE = "modelspec.title"
    TRIGGER = "modelspec.trigger_phrase"
    DATE = "modelspec.date"
    AUTHOR = "modelspec.author"
    LICENSE = "modelspec.license"
    DESCRIPTION = "modelspec.description"
    TAGS = "modelspec.tags"


MODELSPEC_VERSION = "1.0.0"
IMPLEMENTATION = "perfusion"

_REQUIRED = (
    Key.VERSION,
    Key.TITLE,
    Key.TRIGGER,
    Key.SUPERCLASS,
    Key.BASE_FAMILY,
    Key.BASE_FINGERPRINT,
    Key.INFERENCE_BETA,
    Key.INFERENCE_TAU,
    Key.TRAINING_BETA,
    Key.TRAINING_TAU,
    Key.DATE,
    Key.MODELSPEC,
    Key.ARCHITECTURE,
    Key.IMPLEMENTATION,
)

_VERSION = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
#: Control characters (spec §3.2): Unicode general category Cc, C0, DEL and C1.
_CONTROL = "\x00-\x1f\x7f-\x9f"
#: Whitespace (spec §3.2): the 25 code points of Unicode's White_Space property, spelled out so
#: that the rule does not move with the Python version's Unicode tables.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_VISIBLE = f"[^{_WHITESPACE}{_CONTROL}]"  # neither whitespace nor control
_TOKEN = re.compile(f"{_VISIBLE}{{1,64}}")
_PHRASE = re.compile(f"{_VISIBLE}([^{_CONTROL}]{{0,62}}{_VISIBLE})?")
_TITLE = re.compile(f"{_VISIBLE}([^{_CONTROL}]{{0,126}}{_VISIBLE})?")
_LAYER_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")

EMBEDDING_PREFIX = "embedding."
VALUE_PREFIX = "value_target."
KEY_PREFIX = "key_target."
TARGET_INPUT = "target_input"
GATE_DIRECTION = "gate_direction"
SUPERCLASS_INPUT = "superclass_input"
_VECTORS = (TARGET_INPUT, GATE_DIRECTION, SUPERCLASS_INPUT)

#: Bounds for the ``custom`` family, whose layer table comes from the file itself.
CUSTOM_MAX_LAYERS = 1024
CUSTOM_MAX_WIDTH = 16384
CUSTOM_MAX_TEXT_DIM = 8192


class Gate(NamedTuple):
    """The gate σ((s − β)/τ): threshold β and temperature τ (> 0)."""

    beta: float
    tau: float


def _invalid(key: str, message: str) -> FormatError:
    return FormatError(ErrorCode.INVALID_FIELD, f"{key}: {message}")


def _number(metadata: Mapping[str, str], key: str) -> float:
    text = metadata[key]
    if not _NUMBER.fullmatch(text):
        raise _invalid(key, f"{text!r} is not a decimal number")
    value = float(text)
    if not np.isfinite(value):
        raise _invalid(key, f"{text!r} is not finite")
    return value


def check_format_version(metadata: Mapping[str, str]) -> None:
    """Refuse metadata that does not declare a concept file of a major version this reader knows.

    This is the first check on any file: NOT_A_CONCEPT, then MISSING_FIELD / INVALID_FIELD for the
    version itself, then UNSUPPORTED_VERSION — before anything else in the file is interpreted.
    """
    if metadata.get(Key.FORMAT) != FORMAT_NAME:
        raise FormatError(
            ErrorCode.NOT_A_CONCEPT,
            f"{Key.FORMAT} is not {FORMAT_NAME!r}: this is not a Perfusion concept file",
        )
    if Key.VERSION not in metadata:
        raise FormatError(ErrorCode.MISSING_FIELD, f"{Key.VERSION} is missing")
    version = _VERSION.fullmatch(metadata[Key.VERSION])
    if version is None:
        raise _invalid(Key.VERSION, "must be MAJOR.MINOR")
    if int(version.group(1)) != SUPPORTED_MAJOR:
        raise FormatError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"format version {metadata[Key.VERSION]} is not supported by this reader "
            f"(it reads {SUPPORTED_MAJOR}.x); upgrade perfusion-format",
        )


def _check_metadata(metadata: Mapping[str, str]) -> Family:
    """Check the required metadata keys and their values; return the base family."""
    check_format_version(metadata)
    for key in _REQUIRED:
        if key not in metadata:
            raise FormatError(ErrorCode.MISSING_FIELD, f"{key} is missing")

    family = FAMILIES.get(metadata[Key.BASE_FAMILY])
    if family is None:
        raise _invalid(Key.BASE_FAMILY, f"unknown family; one of {', '.join(FAMILIES)}")
    checks = (
        (Key.TITLE, _TITLE, "1 to 128 characters, no control characters or edge spaces"),
        (Key.TRIGGER, _TOKEN, "1 to 64 characters, no whitespace or control characters"),
        (Key.SUPERCLASS, _PHRASE, "1 to 64 characters, no control characters or edge spaces"),
        (Key.BASE_FINGERPRINT, DIGEST, "must be sha256:<64 lowercase hex>"),
        (Key.DATE, _DATE, "must be UTC as YYYY-MM-DDTHH:MM:SSZ"),
    )
    for key, pattern, rule in checks:
        if not pattern.fullmatch(metadata[key]):
            raise _invalid(key, rule)
    try:
        datetime.strptime(metadata[Key.DATE], "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise _invalid(Key.DATE, "is not a real date and time") from None
    constants = (
        (Key.MODELSPEC, MODELSPEC_VERSION),
        (Key.ARCHITECTURE, family.modelspec_architecture),
        (Key.IMPLEMENTATION, IMPLEMENTATION),
    )
    for key, expected in constants:
        if metadata[key] != expected:
            raise _invalid(key, f"must be {expected!r} for family {family.name}")
    for key in (Key.INFERENCE_BETA, Key.TRAINING_BETA):
        _number(metadata, key)
    for key in (Key.INFERENCE_TAU, Key.TRAINING_TAU):
        if _number(metadata, key) <= 0:
            raise _invalid(key, "τ must be positive")
    if Key.TRAINING in metadata:
        try:
            summary = loads_strict(metadata[Key.TRAINING])
        except StrictJSONError as error:
            raise _invalid(Key.TRAINING, f"must be a JSON object: {error}") from None
        if not isinstance(summary, dict):
            raise _invalid(Key.TRAINING, "must be a JSON object")
    return family


def _check_strings(metadata: Mapping[str, str]) -> None:
    """Refuse metadata that could not be written: non-strings, or lone surrogates (no UTF-8).

    Bytes never get here with either (the header's JSON refuses them); this guards metadata
    built in memory, so that every :class:`Concept` can be digested and saved.
    """
    for key, value in metadata.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise FormatError(ErrorCode.METADATA_INVALID, "metadata must map strings to strings")
        if has_lone_surrogate(key) or has_lone_surrogate(value):
            raise FormatError(
                ErrorCode.METADATA_INVALID,
                f"metadata key {key!r} or its value holds a lone surrogate (not UTF-8 encodable)",
            )


def _layer_table(family: Family, tensors: Mapping[str, RawTensor]) -> tuple[tuple[str, int], ...]:
    """The layers a file must carry: the family's table, or (custom) the file's value targets."""
    if family.layers is not None:
        return family.layers
    layers = []
    for name in sorted(tensors):
        if not name.startswith(VALUE_PREFIX):
            continue
        path, shape = name[len(VALUE_PREFIX) :], tensors[name].shape
        if not _LAYER_PATH.fullmatch(path):
            raise FormatError(ErrorCode.UNEXPECTED_TENSOR, f"{name!r} is not a module path")
        if len(shape) != 1 or not 1 <= shape[0] <= CUSTOM_MAX_WIDTH:
            raise FormatError(
                ErrorCode.SHAPE_MISMATCH, f"{name} must be [m] with 1 ≤ m ≤ {CUSTOM_MAX_WIDTH}"
            )
        layers.append((path, shape[0]))
    if not 1 <= len(layers) <= CUSTOM_MAX_LAYERS:
        raise FormatError(
            ErrorCode.MISSING_TENSOR if not layers else ErrorCode.UNEXPECTED_TENSOR,
            f"a custom concept carries 1 to {CUSTOM_MAX_LAYERS} value targets",
        )
    return tuple(layers)


def _text_encoders(family: Family, tensors: Mapping[str, RawTensor]) -> dict[str, int]:
    """Expected embedding widths by encoder (custom: from the file, encoder 1 required)."""
    if family.layers is not None:
        return dict(family.text_encoders)
    widths = {}
    for encoder, _ in family.text_encoders:
        tensor = tensors.get(EMBEDDING_PREFIX + encoder)
        if tensor is None:
            continue
        if len(tensor.shape) != 2 or not 1 <= tensor.shape[1] <= CUSTOM_MAX_TEXT_DIM:
            raise FormatError(
                ErrorCode.SHAPE_MISMATCH,
                f"{EMBEDDING_PREFIX}{encoder} must be [1, d] with d ≤ {CUSTOM_MAX_TEXT_DIM}",
            )
        widths[encoder] = tensor.shape[1]
    if "text_encoder" not in widths:
        raise FormatError(ErrorCode.MISSING_TENSOR, f"{EMBEDDING_PREFIX}text_encoder is missing")
    return widths


def _expected_shapes(
    family: Family, tensors: Mapping[str, RawTensor]
) -> dict[str, tuple[int, ...]]:
    """Every tensor name the file must carry, with its shape (key locking decided by the file)."""
    encoders = _text_encoders(family, tensors)
    layers = _layer_table(family, tensors)
    text_dim = sum(encoders.values())
    expected: dict[str, tuple[int, ...]] = {
        EMBEDDING_PREFIX + encoder: (1, width) for encoder, width in encoders.items()
    }
    expected[TARGET_INPUT] = (text_dim,)
    expected[GATE_DIRECTION] = (text_dim,)
    expected.update({VALUE_PREFIX + path: (width,) for path, width in layers})
    has_superclass = SUPERCLASS_INPUT in tensors
    key_names = {name for name in tensors if name.startswith(KEY_PREFIX)}
    if has_superclass and key_names:
        raise FormatError(
            ErrorCode.KEY_TARGETS, "carries both superclass_input and explicit key targets"
        )
    if has_superclass:
        expected[SUPERCLASS_INPUT] = (text_dim,)
    elif key_names:
        # A key target for a layer outside the table is UNEXPECTED_TENSOR (left to the caller,
        # as for any other name); KEY_TARGETS is for a layer of the table without one.
        expected_keys = {KEY_PREFIX + path: (width,) for path, width in layers}
        missing = sorted(set(expected_keys) - key_names)
        if missing:
            raise FormatError(
                ErrorCode.KEY_TARGETS,
                f"explicit key targets must cover every layer; {missing[0]} is missing",
            )
        expected.update(expected_keys)
    else:
        raise FormatError(
            ErrorCode.KEY_TARGETS, "carries neither superclass_input nor explicit key targets"
        )
    return expected


def _check_tensors(family: Family, tensors: Mapping[str, RawTensor]) -> None:
    expected = _expected_shapes(family, tensors)
    for name in sorted(tensors):
        if name not in expected:
            raise FormatError(ErrorCode.UNEXPECTED_TENSOR, f"{name!r} is not part of the format")
    for name, shape in expected.items():
        if name not in tensors:
            raise FormatError(ErrorCode.MISSING_TENSOR, f"{name} is missing")
        if tensors[name].shape != shape:
            raise FormatError(
                ErrorCode.SHAPE_MISMATCH,
                f"{name} has shape {list(tensors[name].shape)}, expected {list(shape)}",
            )
    for name, tensor in tensors.items():
        if not np.isfinite(to_float32(tensor.dtype, tensor.array)).all():
            raise FormatError(ErrorCode.NON_FINITE, f"{name} contains NaN or infinity")
    target = to_float32(tensors[TARGET_INPUT].dtype, tensors[TARGET_INPUT].array)
    direction = to_float32(tensors[GATE_DIRECTION].dtype, tensors[GATE_DIRECTION].array)
    if not float(np.dot(target.astype(np.float64), direction.astype(np.float64))) > 0:
        raise FormatError(
            ErrorCode.DEGENERATE_GATE,
            "i*ᵀu must be positive (u = C⁻¹i* with C positive definite)",
        )


def to_float32(dtype: DType, array: np.ndarray) -> np.ndarray:
    """Widen stored values to float32 (exact for F16 and BF16)."""
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def _from_float32(dtype: DType, values: np.ndarray) -> np.ndarray:
    """Narrow float32 values to the stored dtype, rounding to nearest even."""
    if dtype != "BF16":
        with np.errstate(over="ignore"):  # overflow gives ±inf, refused later as NON_FINITE
            return values.astype(DTYPES[dtype])
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, eq=False)
class Concept:
    """A validated Perfusion concept.

    ``metadata`` holds every ``__metadata__`` entry except ``perfusion.signatures`` — all of it is
    covered by signatures, unknown keys included (they survive a load/save round trip).
    ``tensors`` holds the stored tensors by name in the file's dtype. ``signatures`` are the
    embedded signer entries, each checked against :attr:`weights_digest` on construction.
    """

    metadata: Mapping[str, str]
    tensors: Mapping[str, RawTensor]
    signatures: tuple[Signature, ...] = field(default=())

    def __post_init__(self) -> None:
        metadata = dict(self.metadata)
        if Key.SIGNATURES in metadata:
            raise ValueError("pass signatures separately from metadata")
        _check_strings(metadata)
        family = _check_metadata(metadata)
        if not self.tensors:
            raise FormatError(ErrorCode.MISSING_TENSOR, "the file carries no tensors")
        dtypes = {tensor.dtype for tensor in self.tensors.values()}
        if len(dtypes) != 1:
            raise FormatError(ErrorCode.MIXED_DTYPES, "a concept has exactly one dtype")
        _check_tensors(family, self.tensors)
        object.__setattr__(self, "metadata", MappingProxyType(metadata))
        object.__setattr__(self, "tensors", MappingProxyType(dict(self.tensors)))
        for signature in self.signatures:
            if not signature.holds_for(self.weights_digest):
                raise SignatureError(
                    ErrorCode.SIGNATURE_INVALID,
                    f"the signature by {signature.key_id} does not match the content",
                )

    # -- identity ---------------------------------------------------------------------------

    @cached_property
    def weights_digest(self) -> str:
        """The canonical content digest that signatures cover (spec §4.2)."""
        return weights_digest(self.metadata, self.tensors)

    @property
    def version(self) -> str:
        """The format version the file declares (``MAJOR.MINOR``)."""
        return self.metadata[Key.VERSION]

    @property
    def dtype(self) -> DType:
        """The one dtype of every tensor: ``F16``, ``BF16`` or ``F32``."""
        return next(iter(self.tensors.values())).dtype

    # -- what the concept is ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The concept's display name (``modelspec.title``)."""
        return self.metadata[Key.TITLE]

    @property
    def token(self) -> str:
        """The trigger token standing for the concept in prompts (``modelspec.trigger_phrase``)."""
        return self.metadata[Key.TRIGGER]

    @property
    def superclass(self) -> str:
        """The superclass word whose encoding locks the keys."""
        return self.metadata[Key.SUPERCLASS]

    @property
    def family(self) -> Family:
        """The base-model family (with its layer table)."""
        return FAMILIES[self.metadata[Key.BASE_FAMILY]]

    @property
    def base_fingerprint(self) -> str:
        """The fingerprint of the base weights the edit was made for (spec §4.3)."""
        return self.metadata[Key.BASE_FINGERPRINT]

    @property
    def inference_gate(self) -> Gate:
        """The default gate at inference."""
        return Gate(
            _number(self.metadata, Key.INFERENCE_BETA), _number(self.metadata, Key.INFERENCE_TAU)
        )

    @property
    def training_gate(self) -> Gate:
        """The gate the concept was trained with."""
        return Gate(
            _number(self.metadata, Key.TRAINING_BETA), _number(self.metadata, Key.TRAINING_TAU)
        )

    @property
    def created(self) -> datetime:
        """When the concept was created (UTC)."""
        return datetime.strptime(self.metadata[Key.DATE], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    @property
    def training(self) -> dict[str, Any]:
        """The training summary (empty when the file has none)."""
        return loads_strict(self.metadata.get(Key.TRAINING, "{}"))

    # -- the tensors, widened to float32 ----------------------------------------------------

    def array(self, name: str) -> np.ndarray:
        """The tensor called ``name`` as a read-only float32 array."""
        tensor = self.tensors[name]
        return _readonly(to_float32(tensor.dtype, tensor.array))

    @property
    def layers(self) -> tuple[tuple[str, int], ...]:
        """``(attn2 module path, m_ℓ)`` for every layer the concept edits."""
        return _layer_table(self.family, self.tensors)

    @property
    def embeddings(self) -> dict[str, np.ndarray]:
        """Token embedding ``[1, d_enc]`` by text-encoder component name."""
        return {
            name[len(EMBEDDING_PREFIX) :]: self.array(name)
            for name in sorted(self.tensors)
            if name.startswith(EMBEDDING_PREFIX)
        }

    @property
    def target_input(self) -> np.ndarray:
        """i*: the encoding at the concept token's position, ``[d]``."""
        return self.array(TARGET_INPUT)

    @property
    def gate_direction(self) -> np.ndarray:
        """u = C⁻¹ i*, ``[d]``: s(e) = eᵀu / i*ᵀu."""
        return self.array(GATE_DIRECTION)

    @property
    def superclass_input(self) -> np.ndarray | None:
        """i_s, ``[d]``, when keys are locked to the superclass (then o_k = W_k i_s)."""
        return self.array(SUPERCLASS_INPUT) if SUPERCLASS_INPUT in self.tensors else None

    @property
    def key_targets(self) -> dict[str, np.ndarray] | None:
        """Explicit key targets o_k by layer path, when the file carries them instead of i_s."""
        if SUPERCLASS_INPUT in self.tensors:
            return None
        return {path: self.array(KEY_PREFIX + path) for path, _ in self.layers}

    @property
    def value_targets(self) -> dict[str, np.ndarray]:
        """Value targets o_v by layer path, ``[m_ℓ]`` each."""
        return {path: self.array(VALUE_PREFIX + path) for path, _ in self.layers}


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_number(value: float) -> str:
    text = repr(float(value))
    return text if _NUMBER.fullmatch(text) else f"{float(value):.17g}"


def create_concept(
    *,
    name: str,
    token: str,
    superclass: str,
    family: str,
    base_fingerprint: str,
    embeddings: Mapping[str, ArrayLike],
    target_input: ArrayLike,
    gate_direction: ArrayLike,
    value_targets: Mapping[str, ArrayLike],
    superclass_input: ArrayLike | None = None,
    key_targets: Mapping[str, ArrayLike] | None = None,
    dtype: DType = "F32",
    inference_gate: tuple[float, float] = (0.7, 0.15),
    training_gate: tuple[float, float] = (0.75, 0.1),
    created: str | None = None,
    author: str | None = None,
    license: str | None = None,
    description: str | None = None,
    tags: tuple[str, ...] = (),
    training: Mapping[str, Any] | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> Concept:
    """Build and validate an unsigned concept from float arrays.

    Arrays are rounded (to nearest even) to ``dtype``. Pass ``superclass_input`` (key locking,
    the default the paper trains with) or ``key_targets`` — exactly one. ``created`` defaults to
    now (UTC, ``YYYY-MM-DDTHH:MM:SSZ``). Raises :class:`FormatError` with the spec's code when
    the result would not be a valid file.
    """
    if dtype not in DTYPES:
        raise FormatError(ErrorCode.DTYPE_NOT_ALLOWED, f"dtype {dtype}; allowed: F16, BF16, F32")
    family_spec = FAMILIES.get(family)
    metadata: dict[str, str] = dict(extra_metadata or {})
    metadata.update(
        {
            Key.FORMAT: FORMAT_NAME,
            Key.VERSION: FORMAT_VERSION,
            Key.TITLE: name,
            Key.TRIGGER: token,
            Key.SUPERCLASS: superclass,
            Key.BASE_FAMILY: family,
            Key.BASE_FINGERPRINT: base_fingerprint,
            Key.INFERENCE_BETA: _format_number(inference_gate[0]),
            Key.INFERENCE_TAU: _format_number(inference_gate[1]),
            Key.TRAINING_BETA: _format_number(training_gate[0]),
            Key.TRAINING_TAU: _format_number(training_gate[1]),
            Key.DATE: created or _utc_now(),
            Key.MODELSPEC: MODELSPEC_VERSION,
            Key.ARCHITECTURE: family_spec.modelspec_architecture if family_spec else "",
            Key.IMPLEMENTATION: IMPLEMENTATION,
        }
    )
    optional = {
        Key.AUTHOR: author,
        Key.LICENSE: license,
        Key.DESCRIPTION: description,
        Key.TAGS: ",".join(tags) if tags else None,
        Key.TRAINING: json.dumps(dict(training), sort_keys=True, separators=(",", ":"))
        if training is not None
        else None,
    }
    metadata.update({key: value for key, value in optional.items() if value is not None})

    arrays: dict[str, ArrayLike] = {
        **{EMBEDDING_PREFIX + encoder: value for encoder, value in embeddings.items()},
        TARGET_INPUT: target_input,
        GATE_DIRECTION: gate_direction,
        **{VALUE_PREFIX + path: value for path, value in value_targets.items()},
        **{KEY_PREFIX + path: value for path, value in (key_targets or {}).items()},
    }
    if superclass_input is not None:
        arrays[SUPERCLASS_INPUT] = superclass_input
    tensors = {}
    for tensor_name, value in arrays.items():
        stored = _from_float32(dtype, np.asarray(value, dtype=np.float32))
        tensors[tensor_name] = RawTensor(dtype, tuple(stored.shape), _readonly(stored))
    return Concept(metadata=metadata, tensors=tensors)
