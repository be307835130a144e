"""perfusion_format — read, write, validate and sign Perfusion concept files.

A concept file is a safetensors file (``*.perfusion.safetensors``, media type
``application/vnd.perfusion.concept.v1+safetensors``) holding one token embedding per text encoder,
the target input i*, the gate direction u = C⁻¹i*, the superclass input i_s (or explicit key
targets) and one value target per cross-attention layer, with string metadata and embedded
Ed25519 signatures. The specification is spec/concept-format.md.

    >>> import perfusion_format as pf
    >>> concept = pf.load("teddy.perfusion.safetensors")     # validated, signatures checked
    >>> pf.verify(concept, [pf.load_public_key("acme.pub")])  # raises unless acme signed it
    >>> pf.save(pf.sign(concept, pf.load_private_key("me")), "teddy.perfusion.safetensors")

Nothing here imports torch or unpickles anything.
"""

from . import oci
from .concept import (
    FILE_SUFFIX,
    FORMAT_NAME,
    FORMAT_VERSION,
    MEDIA_TYPE,
    Concept,
    Gate,
    Key,
    create_concept,
)
from .container import MAX_FILE_SIZE, MAX_HEADER_SIZE, DType
from .digest import (
    DIGEST,
    DIGEST_PATTERN,
    base_fingerprint,
    check_digest,
    content_digest,
    file_digest,
    fingerprint_names,
    is_digest,
)
from .errors import (
    ErrorCode,
    FormatError,
    KeyFileError,
    PerfusionError,
    SignatureError,
    VerificationError,
)
from .families import FAMILIES, Family, get_family
from .fileio import is_temporary, read_bounded, write_atomic
from .files import dumps, load, loads, save
from .names import NAME, NAME_PATTERN, TAG, TAG_PATTERN, is_name, is_tag
from .report import SizeReport, size_report
from .signing import (
    PrivateKey,
    PublicKey,
    Signature,
    load_private_key,
    load_public_key,
    save_private_key,
)
from .verification import VerificationResult, check_signatures, sign, verify

__all__ = [
    "DIGEST",
    "DIGEST_PATTERN",
    "FAMILIES",
    "FILE_SUFFIX",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_FILE_SIZE",
    "MAX_HEADER_SIZE",
    "MEDIA_TYPE",
    "NAME",
    "NAME_PATTERN",
    "TAG",
    "TAG_PATTERN",
    "Concept",
    "DType",
    "ErrorCode",
    "Family",
    "FormatError",
    "Gate",
    "Key",
    "KeyFileError",
    "PerfusionError",
    "PrivateKey",
    "PublicKey",
    "Signature",
    "SignatureError",
    "SizeReport",
    "VerificationError",
    "VerificationResult",
    "base_fingerprint",
    "check_digest",
    "check_signatures",
    "content_digest",
    "create_concept",
    "dumps",
    "file_digest",
    "fingerprint_names",
    "get_family",
    "is_digest",
    "is_name",
    "is_tag",
    "is_temporary",
    "load",
    "load_private_key",
    "load_public_key",
    "loads",
    "oci",
    "read_bounded",
    "save",
    "save_private_key",
    "sign",
    "size_report",
    "verify",
    "write_atomic",
]
