"""Signing concepts and checking who signed them.

Integrity is a property of every :class:`Concept` (each embedded signature is checked when the
concept is built). What this module adds is *authenticity*: :func:`check_signatures` reports which
of the keys you trust signed a concept, and :func:`verify` enforces a policy — at least one
signature, and one by each required key. Trust is always an explicit argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .concept import Concept
from .errors import ErrorCode, SignatureError, VerificationError
from .signing import MAX_SIGNATURES, PrivateKey, PublicKey, Signature, signing_statement

__all__ = ["VerificationResult", "check_signatures", "sign", "verify"]


def sign(concept: Concept, key: PrivateKey) -> Concept:
    """Return ``concept`` with a signature by ``key`` added after the existing ones.

    The weights digest and the other signatures do not change. Signing again with a key that
    already signed returns the concept unchanged.
    """
    public_key = key.public_key
    if any(signature.public_key == public_key for signature in concept.signatures):
        return concept
    if len(concept.signatures) >= MAX_SIGNATURES:
        raise SignatureError(
            ErrorCode.SIGNATURE_MALFORMED, f"a file carries at most {MAX_SIGNATURES} signatures"
        )
    signature = Signature(public_key, key.sign(signing_statement(concept.weights_digest)))
    return Concept(
        metadata=concept.metadata,
        tensors=concept.tensors,
        signatures=(*concept.signatures, signature),
    )


@dataclass(frozen=True)
class VerificationResult:
    """Which keys signed a concept, measured against the keys a verifier requires.

    ``signers`` are the key ids of every embedded signature (all of which hold);
    ``missing`` are the key ids of required keys that did not sign.
    """

    weights_digest: str
    signers: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when the concept is signed and every required key signed it."""
        return bool(self.signers) and not self.missing


def check_signatures(concept: Concept, required: Sequence[PublicKey] = ()) -> VerificationResult:
    """Report the signers of ``concept`` and which ``required`` keys are missing; never raises."""
    signed_by = {signature.public_key for signature in concept.signatures}
    return VerificationResult(
        weights_digest=concept.weights_digest,
        signers=tuple(signature.key_id for signature in concept.signatures),
        missing=tuple(key.key_id for key in required if key not in signed_by),
    )


def verify(concept: Concept, required: Sequence[PublicKey] = ()) -> VerificationResult:
    """Enforce: ``concept`` carries at least one signature and one by each ``required`` key.

    With no ``required`` keys this checks integrity only — that the file is signed and its
    signatures hold — not who signed it. Raises :class:`VerificationError` with NOT_SIGNED or
    SIGNER_MISSING; returns the :class:`VerificationResult` otherwise.
    """
    result = check_signatures(concept, required)
    if not result.signers:
        raise VerificationError(ErrorCode.NOT_SIGNED, "the concept carries no signature")
    if result.missing:
        raise VerificationError(
            ErrorCode.SIGNER_MISSING, f"not signed by {', '.join(result.missing)}"
        )
    return result
