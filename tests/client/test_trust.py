"""pfx.trust: trust rules, levels, and the decision taken for real signed and unsigned files."""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from concept_factory import build_concept

import perfusion_format as pf
from pfx.errors import ClientError, ErrorCode
from pfx.trust import TrustDecision, TrustPolicy, TrustRule, require_trusted

UNSIGNED = build_concept()
TRUSTED_KEY = pf.PrivateKey.generate()
OTHER_KEY = pf.PrivateKey.generate()
TRUSTED_ID = TRUSTED_KEY.public_key.key_id
OTHER_ID = OTHER_KEY.public_key.key_id
BY_TRUSTED = pf.dumps(pf.sign(UNSIGNED, TRUSTED_KEY))
BY_OTHER = pf.dumps(pf.sign(UNSIGNED, OTHER_KEY))
BY_BOTH = pf.dumps(pf.sign(pf.sign(UNSIGNED, OTHER_KEY), TRUSTED_KEY))


def _tamper_signature(data: bytes) -> bytes:
    """``data`` with one character of its (only) signature changed: still canonical base64 of 64
    bytes, so the entry parses but the signature no longer holds."""
    encoded = pf.loads(data).signatures[0].to_json()["signature"].encode("ascii")
    assert data.count(encoded) == 1
    replacement = (b"B" if encoded[:1] == b"A" else b"A") + encoded[1:]
    return data.replace(encoded, replacement)


def _tamper_weights(data: bytes) -> bytes:
    """``data`` with the lowest bit of its first tensor byte flipped (values stay finite)."""
    changed = bytearray(data)
    (header_length,) = struct.unpack("<Q", changed[:8])
    changed[8 + header_length] ^= 0x01
    return bytes(changed)


TAMPERED = _tamper_signature(BY_TRUSTED)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A configuration folder that does not exist yet."""
    return tmp_path / "config"


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, Path]:
    """Public key files (PEM) of the trusted and the other key."""
    files = {}
    for name, key in (("trusted", TRUSTED_KEY), ("other", OTHER_KEY)):
        files[name] = tmp_path / f"{name}.pub"
        files[name].write_bytes(key.public_key.to_pem())
    return files


@pytest.fixture
def policy(folder: Path, key_files: dict[str, Path]) -> TrustPolicy:
    """The trusted key trusted for acme/*, saved and loaded back."""
    policy = TrustPolicy.load(folder)
    policy.add("acme/*", key_files["trusted"])
    policy.save()
    return TrustPolicy.load(folder)


def _refusal_code(decision: TrustDecision) -> str | None:
    """The code require_trusted raises for ``decision``, None when it raises nothing."""
    try:
        require_trusted(decision)
    except ClientError as error:
        assert "\n" not in error.message
        assert error.message == decision.message
        return str(error.code)
    return None


# -- the policy file -----------------------------------------------------------------------------


def test_no_policy_file_means_enforce_and_no_rules(folder: Path) -> None:
    policy = TrustPolicy.load(folder)
    assert policy.level == "enforce"
    assert policy.rules == ()
    assert not folder.exists()


def test_default_folder_is_the_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PFX_CONFIG_DIR", str(tmp_path / "elsewhere"))
    assert TrustPolicy.load().path == tmp_path / "elsewhere" / "trust.toml"


def test_save_writes_the_rules_and_a_copy_of_the_key(
    policy: TrustPolicy, folder: Path, key_files: dict[str, Path]
) -> None:
    assert policy.rules == (TrustRule("acme/*", TRUSTED_ID),)
    key_file = folder / "trust" / "keys" / f"{TRUSTED_ID.removeprefix('ed25519:')}.pub"
    assert key_file.read_bytes() == TRUSTED_KEY.public_key.to_pem()
    assert pf.load_public_key(key_file) == TRUSTED_KEY.public_key
    key_files["trusted"].unlink()  # the policy no longer needs the original
    assert TrustPolicy.load(folder).evaluate("acme/teddy", BY_TRUSTED).status == "trusted"
    for path in (folder / "trust.toml", key_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "trust" / "keys").stat().st_mode) == 0o700


def test_adding_a_rule_twice_keeps_one(policy: TrustPolicy, key_files: dict[str, Path]) -> None:
    assert policy.add("acme/*", key_files["trusted"]) == TrustRule("acme/*", TRUSTED_ID)
    assert len(policy.rules) == 1


def test_a_bad_key_file_is_key_invalid(policy: TrustPolicy, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    with pytest.raises(pf.KeyFileError) as caught:
        policy.add("acme/*", bad)
    assert caught.value.code == pf.ErrorCode.KEY_INVALID
    assert len(policy.rules) == 1


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("level = [", "Invalid"),
        ('level = "strict"', "'strict' is not a trust level"),
        ("lvl = 'warn'", "unknown key 'lvl'"),
        ("rules = 'acme/*'", "rules must be an array"),
        ("rules = [{ pattern = 'acme/*' }]", "rule 1 must hold exactly"),
        ("rules = [{ pattern = 'acme/*', key_id = 7 }]", "rule 1 must hold exactly"),
        ("rules = ['acme/*']", "rule 1 must hold exactly"),
        ("rules = [{ pattern = 'acme', key_id = 'ed25519:" + "0" * 32 + "' }]", "trust pattern"),
        ("rules = [{ pattern = '*', key_id = 'ed25519:../../../x' }]", "not a key id"),
    ],
)
def test_malformed_policy_file_is_config_invalid(
    folder: Path, content: str, complaint: str
) -> None:
    folder.mkdir()
    (folder / "trust.toml").write_text(content)
    with pytest.raises(ClientError) as caught:
        TrustPolicy.load(folder)
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    assert caught.value.message.startswith(f"{folder / 'trust.toml'}: ")
    assert complaint in caught.value.message


def test_a_replaced_key_file_is_config_invalid(policy: TrustPolicy, folder: Path) -> None:
    key_file = next((folder / "trust" / "keys").iterdir())
    key_file.write_bytes(OTHER_KEY.public_key.to_pem())
    with pytest.raises(ClientError) as caught:
        TrustPolicy.load(folder).evaluate("acme/teddy", BY_OTHER)
    assert caught.value.code == ErrorCode.CONFIG_INVALID
    key_file.unlink()
    with pytest.raises(ClientError, match="CONFIG_INVALID"):
        TrustPolicy.load(folder).evaluate("acme/teddy", BY_TRUSTED)


# -- patterns ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "repository", "matches"),
    [
        ("acme/*", "acme/teddy", True),
        ("acme/*", "acmex/foo", False),
        ("acme/*", "other/x", False),
        ("acme/*", "acm/e", False),
        ("*", "anyone/anything", True),
        ("acme/teddy", "acme/teddy", True),
        ("acme/teddy", "acme/teddy2", False),
        ("acme/ted?y", "acme/teddy", True),
        ("a*/teddy", "acme/teddy", True),
        ("a*/teddy", "acme/other", False),
        ("*/teddy", "other/teddy", True),
        # OCI names, HOST[:PORT]/REPO: part by part, wildcards never cross a '/'
        ("127.0.0.1:5000/acme/*", "127.0.0.1:5000/acme/teddy", True),
        ("127.0.0.1:5000/acme/*", "127.0.0.1:5001/acme/teddy", False),
        ("127.0.0.1:5000/acme/*", "127.0.0.1:5000/acme/x/teddy", False),
        ("127.0.0.1:5000/acme/*/*", "127.0.0.1:5000/acme/x/teddy", True),
        ("*/acme/teddy", "ghcr.io/acme/teddy", True),
        ("ghcr.io/*", "ghcr.io/acme/teddy", False),
        ("acme/*/x", "acme/teddy/x", True),
        ("*", "ghcr.io/acme/teddy", True),
    ],
)
def test_patterns(pattern: str, repository: str, matches: bool) -> None:
    assert TrustRule(pattern, TRUSTED_ID).matches(repository) is matches


@pytest.mark.parametrize(
    "pattern", ["acme", "Acme/*", "acme//x", "/x", "acme/", "", "ac[m]e/*", "host/a:b/*"]
)
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ClientError) as caught:
        TrustRule(pattern, TRUSTED_ID)
    assert caught.value.code == ErrorCode.USAGE_ERROR


def test_rules_apply_only_where_their_pattern_matches(policy: TrustPolicy) -> None:
    assert policy.evaluate("acme/teddy", BY_TRUSTED).status == "trusted"
    assert policy.evaluate("acmex/foo", BY_TRUSTED).status == "untrusted"
    assert policy.evaluate("other/x", BY_TRUSTED).status == "untrusted"


# -- decisions under enforce ---------------------------------------------------------------------


def test_trusted(policy: TrustPolicy) -> None:
    decision = policy.evaluate("acme/teddy", BY_TRUSTED)
    assert decision == policy.evaluate("acme/teddy", pf.loads(BY_TRUSTED))  # bytes or Concept
    assert decision.status == "trusted"
    assert decision.signers == (TRUSTED_ID,)
    assert decision.trusted_by == (TRUSTED_ID,)
    assert decision.accepted
    assert _refusal_code(decision) is None


def test_trusted_when_any_signer_is_trusted(policy: TrustPolicy) -> None:
    decision = policy.evaluate("acme/teddy", BY_BOTH)
    assert decision.status == "trusted"
    assert set(decision.signers) == {TRUSTED_ID, OTHER_ID}
    assert decision.trusted_by == (TRUSTED_ID,)


def test_signed_by_another_key_is_untrusted(policy: TrustPolicy) -> None:
    decision = policy.evaluate("acme/teddy", BY_OTHER)
    assert decision.status == "untrusted"
    assert decision.signers == (OTHER_ID,)
    assert decision.trusted_by == ()
    assert not decision.accepted
    assert OTHER_ID in decision.message
    assert _refusal_code(decision) == "UNTRUSTED"


def test_unsigned(policy: TrustPolicy) -> None:
    decision = policy.evaluate("acme/teddy", pf.dumps(UNSIGNED))
    assert (decision.status, decision.signers, decision.accepted) == ("unsigned", (), False)
    assert _refusal_code(decision) == "NOT_SIGNED"


@pytest.mark.parametrize("tamper", [_tamper_signature, _tamper_weights])
def test_a_signature_that_does_not_hold_is_invalid(
    policy: TrustPolicy, tamper: Callable[[bytes], bytes]
) -> None:
    decision = policy.evaluate("acme/teddy", tamper(BY_TRUSTED))
    assert decision.status == "invalid-signature"
    assert decision.signers == (TRUSTED_ID,)
    assert decision.trusted_by == ()
    assert not decision.accepted
    assert _refusal_code(decision) == "SIGNATURE_INVALID"


def test_other_format_errors_are_not_a_trust_question(policy: TrustPolicy) -> None:
    with pytest.raises(pf.FormatError) as caught:
        policy.evaluate("acme/teddy", BY_TRUSTED[:-10])
    assert caught.value.code == pf.ErrorCode.TRUNCATED


@pytest.mark.parametrize(
    "repository", ["acme", "acme//x", "../acme/teddy", "Acme/teddy", "h:99999/a", "h/a:b/c"]
)
def test_a_malformed_repository_is_refused(policy: TrustPolicy, repository: str) -> None:
    with pytest.raises(ClientError) as caught:
        policy.evaluate(repository, BY_TRUSTED)
    assert caught.value.code == ErrorCode.REFERENCE_INVALID


def test_allow_unsigned_accepts_unsigned_and_untrusted_but_never_invalid(
    policy: TrustPolicy,
) -> None:
    for data, status in ((pf.dumps(UNSIGNED), "unsigned"), (BY_OTHER, "untrusted")):
        decision = policy.evaluate("acme/teddy", data, allow_unsigned=True)
        assert (decision.status, decision.accepted) == (status, True)
        assert "accepted" in decision.message
        assert _refusal_code(decision) is None
    decision = policy.evaluate("acme/teddy", TAMPERED, allow_unsigned=True)
    assert not decision.accepted
    assert _refusal_code(decision) == "SIGNATURE_INVALID"


# -- revocation ----------------------------------------------------------------------------------


def test_removing_a_key_revokes_it_everywhere(
    policy: TrustPolicy, folder: Path, key_files: dict[str, Path]
) -> None:
    policy.add("other/*", key_files["trusted"])
    policy.add("other/*", key_files["other"])
    removed = policy.remove(TRUSTED_ID)
    assert removed == (TrustRule("acme/*", TRUSTED_ID), TrustRule("other/*", TRUSTED_ID))
    assert policy.rules == (TrustRule("other/*", OTHER_ID),)
    for repository in ("acme/teddy", "other/teddy"):
        assert policy.evaluate(repository, BY_TRUSTED).status == "untrusted"
    policy.save()
    reloaded = TrustPolicy.load(folder)
    assert reloaded.evaluate("other/teddy", BY_TRUSTED).status == "untrusted"
    assert reloaded.evaluate("other/teddy", BY_OTHER).status == "trusted"
    key_names = [path.name for path in (folder / "trust" / "keys").iterdir()]
    assert key_names == [f"{OTHER_ID.removeprefix('ed25519:')}.pub"]  # the revoked key is gone


def test_removing_one_pattern_keeps_the_others(
    policy: TrustPolicy, key_files: dict[str, Path]
) -> None:
    policy.add("other/*", key_files["trusted"])
    assert policy.remove(TRUSTED_ID, pattern="acme/*") == (TrustRule("acme/*", TRUSTED_ID),)
    assert policy.evaluate("acme/teddy", BY_TRUSTED).status == "untrusted"
    assert policy.evaluate("other/teddy", BY_TRUSTED).status == "trusted"
    assert policy.remove(OTHER_ID) == ()


# -- levels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "untrusted", "unsigned", "invalid"),
    [
        ("enforce", False, False, False),
        ("warn", True, True, False),
        ("off", True, True, True),
    ],
)
def test_levels(
    policy: TrustPolicy, folder: Path, level: str, untrusted: bool, unsigned: bool, invalid: bool
) -> None:
    policy.set_level(level)
    policy.save()
    policy = TrustPolicy.load(folder)
    assert policy.level == level
    cases = {"untrusted": BY_OTHER, "unsigned": pf.dumps(UNSIGNED), "invalid-signature": TAMPERED}
    decisions = {status: policy.evaluate("acme/teddy", data) for status, data in cases.items()}
    assert {status: decision.status for status, decision in decisions.items()} == {
        status: status for status in cases
    }
    accepted = {status: decision.accepted for status, decision in decisions.items()}
    assert accepted == {"untrusted": untrusted, "unsigned": unsigned, "invalid-signature": invalid}
    for decision in decisions.values():
        assert (f"trust level {level}" in decision.message) is decision.accepted
    assert policy.evaluate("acme/teddy", BY_TRUSTED).accepted


def test_an_unknown_level_is_refused(policy: TrustPolicy) -> None:
    with pytest.raises(ClientError) as caught:
        policy.set_level("lenient")
    assert caught.value.code == ErrorCode.USAGE_ERROR
    assert policy.level == "enforce"
