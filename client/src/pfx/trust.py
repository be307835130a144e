"""The local trust policy: which signing keys are trusted for which concepts.

Stored in the configuration folder (:func:`pfx.config.config_dir`)::

    trust.toml                       level = "enforce"
                                     rules = [{ pattern = "acme/*", key_id = "ed25519:…" }, …]
    trust/keys/<key id hex>.pub      each trusted public key (PEM SubjectPublicKeyInfo)

A rule trusts one key for the concepts its pattern matches: ``*`` matches every concept, otherwise
the pattern is ``<namespace>/<name>`` where each half may use ``*`` (any characters) and ``?``
(one character), and neither crosses the ``/``: ``acme/*`` matches ``acme/teddy`` but neither
``acmex/teddy`` nor ``other/teddy``.

A concept pulled from an OCI registry (``pfx pull oci://HOST[:PORT]/REPO:TAG``) is judged by the
name ``HOST[:PORT]/REPO`` — ``127.0.0.1:5000/acme/teddy``, ``ghcr.io/acme/concepts/teddy`` — and a
pattern for it has as many ``/``-separated parts, each matched on its own (wildcards never cross
a ``/``): ``127.0.0.1:5000/acme/*`` matches ``127.0.0.1:5000/acme/teddy`` but not
``127.0.0.1:5000/acme/x/teddy`` nor ``127.0.0.1:5001/acme/teddy``. A two-part pattern such as
``localhost/*`` covers the pfx namespace ``localhost`` *and* the one-component repositories of the
OCI host ``localhost``: name a host with its port, or with more parts, to keep them apart.

:meth:`TrustPolicy.evaluate` gives a concept one :data:`Status`:

- ``trusted``: a signature by a key trusted for its name holds;
- ``untrusted``: every signature holds, but none is by a key trusted for its name;
- ``unsigned``: it carries no signature;
- ``invalid-signature``: an embedded signature is malformed or does not hold (the file was
  altered after signing).

Whether it is accepted depends on the policy's :data:`Level`:

==============  =========  ==========================  ========================  ===========
level           trusted    untrusted, unsigned         invalid-signature         refused with
==============  =========  ==========================  ========================  ===========
``enforce``     accepted   refused (accepted when      refused, always           UNTRUSTED,
(the default)              ``allow_unsigned``)                                   NOT_SIGNED,
                                                                                 SIGNATURE_INVALID
``warn``        accepted   accepted, with a message    refused                   SIGNATURE_INVALID
``off``         accepted   accepted                    accepted                  —
==============  =========  ==========================  ========================  ===========

:func:`require_trusted` turns a refusal into a :class:`~pfx.errors.ClientError` with that code.
Removing a key's rules revokes it: concepts it signed are untrusted from then on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, cast, get_args

import tomli_w

import perfusion_format as pf
from perfusion_format.container import parse_container
from perfusion_format.signing import decode_signatures
from pfx.cache import split_repository
from pfx.config import config_dir as default_config_dir
from pfx.config import make_private_dirs, read_toml, write_private_file
from pfx.errors import ClientError, ErrorCode
from pfx.oci_reference import is_oci_name

__all__ = [
    "TRUST_FILE_NAME",
    "Level",
    "Status",
    "TrustDecision",
    "TrustPolicy",
    "TrustRule",
    "require_trusted",
]

TRUST_FILE_NAME = "trust.toml"
_KEYS_FOLDER = ("trust", "keys")

Level = Literal["enforce", "warn", "off"]
"""How strictly the policy is applied (see the module docstring)."""

Status = Literal["trusted", "untrusted", "unsigned", "invalid-signature"]
"""What a concept's signatures say about it (see the module docstring)."""

_LEVELS: tuple[Level, ...] = get_args(Level)
_PATTERN = re.compile(r"\*|[a-z0-9._:*?-]+(?:/[a-z0-9._*?-]+)+")
_KEY_ID = re.compile(r"ed25519:([0-9a-f]{32})")
_REFUSAL_CODES: dict[Status, str] = {
    "untrusted": ErrorCode.UNTRUSTED,
    "unsigned": pf.ErrorCode.NOT_SIGNED,
    "invalid-signature": pf.ErrorCode.SIGNATURE_INVALID,
}


def _usage(message: str) -> ClientError:
    return ClientError(ErrorCode.USAGE_ERROR, message)


@dataclass(frozen=True)
class TrustRule:
    """Trust the key ``key_id`` (``ed25519:<32 hex>``) for the concepts ``pattern`` matches.

    Raises ClientError (USAGE_ERROR) when the pattern or the key id is malformed.
    """

    pattern: str
    key_id: str

    def __post_init__(self) -> None:
        if not _PATTERN.fullmatch(self.pattern):
            raise _usage(
                f"{self.pattern!r} is not a trust pattern: '*', '<namespace>/<name>' or "
                "'<host[:port]>/<repository>', lowercase, with * and ? as wildcards"
            )
        if not _KEY_ID.fullmatch(self.key_id):
            raise _usage(f"{self.key_id!r} is not a key id (ed25519: and 32 lowercase hex)")

    def matches(self, repository: str) -> bool:
        """True when this rule covers the concept ``namespace/name`` (or the OCI repository
        ``host/repo``): ``*``, or as many parts as the name, each matching its own."""
        if self.pattern == "*":
            return True
        parts, names = self.pattern.split("/"), repository.split("/")
        return len(parts) == len(names) and all(map(fnmatchcase, names, parts))


@dataclass(frozen=True)
class TrustDecision:
    """What the trust policy says about one concept (see :meth:`TrustPolicy.evaluate`)."""

    status: Status
    """What its signatures say: trusted, untrusted, unsigned or invalid-signature."""
    signers: tuple[str, ...]
    """The key ids of its signatures (for an invalid signature: those that could be read)."""
    trusted_by: tuple[str, ...]
    """The signers whose signature holds and who are trusted for its name."""
    accepted: bool
    """Whether the policy lets it be used."""
    message: str
    """One line for the user: who signed it, what is wrong, and why it is accepted anyway."""


def _claimed_signers(data: bytes) -> tuple[str, ...]:
    """The key ids named by the signature entries of ``data``, or () where they cannot be read."""
    try:
        block = parse_container(data).metadata.get(pf.Key.SIGNATURES)
        return tuple(entry.key_id for entry in decode_signatures(block)) if block else ()
    except pf.PerfusionError:
        return ()


class TrustPolicy:
    """The trust rules and level kept in ``folder`` (the configuration folder).

    Changes stay in memory until :meth:`save`.
    """

    def __init__(
        self, folder: Path, level: Level = "enforce", rules: Sequence[TrustRule] = ()
    ) -> None:
        self.folder = folder
        self._level: Level = "enforce"
        self.set_level(level)
        self._rules = list(rules)
        self._keys: dict[str, pf.PublicKey] = {}

    @property
    def path(self) -> Path:
        """The policy file, ``trust.toml`` in :attr:`folder`."""
        return self.folder / TRUST_FILE_NAME

    @property
    def level(self) -> Level:
        """``enforce``, ``warn`` or ``off``."""
        return self._level

    @property
    def rules(self) -> tuple[TrustRule, ...]:
        """The rules, in the order they were added."""
        return tuple(self._rules)

    @classmethod
    def load(cls, config_dir: Path | None = None) -> TrustPolicy:
        """Read the policy of ``config_dir`` (default :func:`pfx.config.config_dir`).

        No ``trust.toml`` gives level ``enforce`` and no rules. Raises ClientError
        (CONFIG_INVALID) naming the file when it is not a valid policy.
        """
        policy = cls(default_config_dir() if config_dir is None else config_dir)
        table = read_toml(policy.path) or {}
        try:
            policy._read(table)
        except ClientError as error:  # the checks of arguments, reported against the file
            raise ClientError(ErrorCode.CONFIG_INVALID, f"{policy.path}: {error.message}") from None
        return policy

    def _read(self, table: dict[str, Any]) -> None:
        unknown = sorted(set(table) - {"level", "rules"})
        if unknown:
            raise _usage(f"unknown key {unknown[0]!r}")
        self.set_level(table.get("level", "enforce"))
        entries = table.get("rules", [])
        if not isinstance(entries, list):
            raise _usage("rules must be an array of tables")
        for number, entry in enumerate(entries, start=1):
            fields = entry if isinstance(entry, dict) else {}
            strings = all(isinstance(value, str) for value in fields.values())
            if set(fields) != {"pattern", "key_id"} or not strings:
                raise _usage(f"rule {number} must hold exactly a pattern and a key_id (strings)")
            self._rules.append(TrustRule(fields["pattern"], fields["key_id"]))

    def set_level(self, level: str) -> None:
        """Set the level: ``enforce``, ``warn`` or ``off`` (else USAGE_ERROR)."""
        if level not in _LEVELS:
            raise _usage(f"{level!r} is not a trust level ({', '.join(_LEVELS)})")
        self._level = cast(Level, level)

    def add(self, pattern: str, public_key_path: Path) -> TrustRule:
        """Trust the key in ``public_key_path`` for ``pattern``; returns the rule.

        The key file is read with perfusion_format (KEY_INVALID when it is not an Ed25519 key,
        ``OSError`` when it cannot be read) and copied into the policy's folder by :meth:`save`.
        Adding a rule that exists already changes nothing.
        """
        key = pf.load_public_key(public_key_path)
        rule = TrustRule(pattern, key.key_id)
        self._keys[key.key_id] = key
        if rule not in self._rules:
            self._rules.append(rule)
        return rule

    def remove(self, key_id: str, pattern: str | None = None) -> tuple[TrustRule, ...]:
        """Stop trusting ``key_id`` for ``pattern`` or, with None, for everything (revocation).

        Returns the rules removed (none when no rule matched).
        """
        removed = tuple(
            rule
            for rule in self._rules
            if rule.key_id == key_id and (pattern is None or rule.pattern == pattern)
        )
        self._rules = [rule for rule in self._rules if rule not in removed]
        return removed

    def _key_path(self, key_id: str) -> Path:
        return self.folder.joinpath(*_KEYS_FOLDER, key_id.removeprefix("ed25519:") + ".pub")

    def _key(self, key_id: str) -> pf.PublicKey:
        """The trusted key ``key_id``: added in this session, else read from its key file."""
        if key_id not in self._keys:
            path = self._key_path(key_id)
            try:
                key = pf.load_public_key(path)
            except OSError as error:
                message = f"{path}: {error.strerror or error}"
                raise ClientError(ErrorCode.CONFIG_INVALID, message) from None
            except pf.KeyFileError as error:
                raise ClientError(ErrorCode.CONFIG_INVALID, f"{path}: {error.message}") from None
            if key.key_id != key_id:
                raise ClientError(ErrorCode.CONFIG_INVALID, f"{path} holds {key.key_id}")
            self._keys[key_id] = key
        return self._keys[key_id]

    def save(self) -> Path:
        """Write the policy: the new key files, then ``trust.toml`` (atomically, mode 0600), then
        remove the key files no rule names any more. Returns the policy file's path."""
        keys_folder = make_private_dirs(self.folder.joinpath(*_KEYS_FOLDER))
        in_use = {rule.key_id for rule in self._rules}
        for key_id, key in self._keys.items():
            if key_id in in_use:
                write_private_file(self._key_path(key_id), key.to_pem())
        table = {
            "level": self._level,
            "rules": [{"pattern": rule.pattern, "key_id": rule.key_id} for rule in self._rules],
        }
        write_private_file(self.path, tomli_w.dumps(table).encode("utf-8"))
        for path in keys_folder.glob("*.pub"):
            if f"ed25519:{path.stem}" not in in_use:
                path.unlink(missing_ok=True)
        return self.path

    def evaluate(
        self, repository: str, concept: bytes | pf.Concept, allow_unsigned: bool = False
    ) -> TrustDecision:
        """Judge ``concept`` (a validated :class:`~perfusion_format.Concept` or a file's bytes),
        published as ``repository`` (``namespace/name``, or ``host/repo`` from an OCI registry),
        against this policy.

        ``allow_unsigned`` accepts unsigned concepts *and* validly signed ones by untrusted keys
        under ``enforce``; an invalid signature is refused even then (see the module docstring).
        Bytes that are not a valid concept file for other reasons than their signatures raise
        perfusion_format's FormatError; REFERENCE_INVALID when ``repository`` is malformed.
        """
        if not is_oci_name(repository):
            split_repository(repository)
        try:
            loaded = concept if isinstance(concept, pf.Concept) else pf.loads(concept)
        except pf.SignatureError as error:
            assert isinstance(concept, bytes)  # a Concept's signatures were checked when built
            problem = f"has an invalid signature: {error.message}"
            signers = _claimed_signers(concept)
            return self._decide(
                repository, "invalid-signature", signers, (), problem, allow_unsigned
            )
        candidates = {
            rule.key_id: self._key(rule.key_id) for rule in self._rules if rule.matches(repository)
        }
        result = pf.check_signatures(loaded, list(candidates.values()))
        trusted_by = tuple(key_id for key_id in candidates if key_id not in result.missing)
        signers = result.signers
        if trusted_by:
            description = f"is signed by {', '.join(trusted_by)}, trusted for it"
            return self._decide(repository, "trusted", signers, trusted_by, description, False)
        if signers:
            problem = f"is signed by {', '.join(signers)}, no key trusted for it"
            return self._decide(repository, "untrusted", signers, (), problem, allow_unsigned)
        return self._decide(repository, "unsigned", (), (), "carries no signature", allow_unsigned)

    def _decide(
        self,
        repository: str,
        status: Status,
        signers: tuple[str, ...],
        trusted_by: tuple[str, ...],
        description: str,
        allow_unsigned: bool,
    ) -> TrustDecision:
        accepted, reason = self._acceptance(status, allow_unsigned)
        message = f"{repository} {description}"
        if accepted and reason:
            message = f"{message}; accepted ({reason})"
        return TrustDecision(status, signers, trusted_by, accepted, message)

    def _acceptance(self, status: Status, allow_unsigned: bool) -> tuple[bool, str]:
        """Whether a concept of ``status`` is accepted, and why when it is not trusted."""
        if status == "trusted":
            return True, ""
        if self._level == "off":
            return True, "trust level off"
        if status == "invalid-signature":
            return False, ""
        if self._level == "warn":
            return True, "trust level warn"
        if allow_unsigned:
            return True, "unsigned and untrusted concepts allowed"
        return False, ""


def require_trusted(decision: TrustDecision) -> None:
    """Raise ClientError unless ``decision`` is accepted: UNTRUSTED, NOT_SIGNED or
    SIGNATURE_INVALID (the last two are perfusion_format's codes), with the decision's message."""
    if not decision.accepted:
        raise ClientError(_REFUSAL_CODES[decision.status], decision.message)
