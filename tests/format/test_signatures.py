"""Signatures: what they cover, what leaves them intact, key files and trust policies."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from concept_factory import ConceptFactory

import perfusion_format as pf
from perfusion_format.container import write_container

from . import spec_reader


def test_signature_checks_out_with_an_independent_verifier(
    make_concept: ConceptFactory, signing_key: pf.PrivateKey
) -> None:
    data = pf.dumps(pf.sign(make_concept(), signing_key))
    assert spec_reader.signatures(data) == [(signing_key.public_key.key_id, True)]
    assert spec_reader.weights_digest(data) == pf.loads(data).weights_digest


def test_adding_a_signature_changes_neither_digest_nor_other_signatures(
    make_concept: ConceptFactory,
) -> None:
    author, organization = pf.PrivateKey.generate(), pf.PrivateKey.generate()
    once = pf.sign(make_concept(), author)
    twice = pf.sign(once, organization)
    assert twice.weights_digest == once.weights_digest
    assert twice.signatures[0] == once.signatures[0]
    assert [s.key_id for s in twice.signatures] == [
        author.public_key.key_id,
        organization.public_key.key_id,
    ]
    assert pf.sign(twice, author) is twice  # signing again with the same key is a no-op
    loaded = pf.loads(pf.dumps(twice))
    assert pf.verify(loaded, [author.public_key, organization.public_key]).ok


def test_any_signed_metadata_change_invalidates_every_signature(
    make_concept: ConceptFactory,
) -> None:
    signed = pf.sign(pf.sign(make_concept(), pf.PrivateKey.generate()), pf.PrivateKey.generate())
    for key, value in [("modelspec.title", "Other"), ("x.unknown", "added")]:
        metadata = {**signed.metadata, key: value}
        with pytest.raises(pf.SignatureError) as raised:
            pf.Concept(metadata=metadata, tensors=signed.tensors, signatures=signed.signatures)
        assert raised.value.code == "SIGNATURE_INVALID"
        digest = pf.Concept(metadata=metadata, tensors=signed.tensors).weights_digest
        assert not any(s.holds_for(digest) for s in signed.signatures)


def test_verify_policy(make_concept: ConceptFactory, signing_key: pf.PrivateKey) -> None:
    unsigned = make_concept()
    with pytest.raises(pf.VerificationError) as raised:
        pf.verify(unsigned)
    assert raised.value.code == "NOT_SIGNED"
    signed = pf.sign(unsigned, signing_key)
    assert pf.verify(signed).signers == (signing_key.public_key.key_id,)  # integrity only
    stranger = pf.PrivateKey.generate().public_key
    with pytest.raises(pf.VerificationError) as raised:
        pf.verify(signed, [signing_key.public_key, stranger])
    assert raised.value.code == "SIGNER_MISSING"
    assert stranger.key_id in raised.value.message
    report = pf.check_signatures(signed, [stranger])
    assert not report.ok and report.missing == (stranger.key_id,)


def _forge(concept: pf.Concept, block: object) -> bytes:
    """The file of ``concept`` with ``block`` as its signature list, written unchecked."""
    metadata = {**concept.metadata, "perfusion.signatures": json.dumps(block)}
    return write_container(metadata, dict(concept.tensors))


def _with_block(concept: pf.Concept, block: object) -> pf.FormatError:
    with pytest.raises(pf.FormatError) as raised:
        pf.loads(_forge(concept, block))
    return raised.value


def test_malformed_signature_entries(make_concept: ConceptFactory, signing_key) -> None:
    concept = make_concept()
    good = pf.sign(concept, signing_key).signatures[0].to_json()
    # a non-canonical base64 spelling of the same 64 bytes (the last char's unused bits set)
    sig = good["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    twin = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    assert base64.b64decode(twin) == base64.b64decode(sig)
    cases = [
        [],
        [good, good],
        [{**good, "key_id": "ed25519:" + "0" * 32}],
        [{**good, "signature": twin}],
        [{**good, "extra": "x"}],
        [{k: v for k, v in good.items() if k != "key_id"}],
        "not a list",
        [good] * 17,
    ]
    for block in cases:
        error = _with_block(concept, block)
        assert error.code == "SIGNATURE_MALFORMED", block
    assert pf.loads(_forge(concept, [good])).signatures[0].to_json() == good


def test_a_valid_block_copied_onto_another_concept_fails(
    make_concept: ConceptFactory, signing_key: pf.PrivateKey
) -> None:
    entry = pf.sign(make_concept(seed=1), signing_key).signatures[0].to_json()
    assert _with_block(make_concept(seed=2), [entry]).code == "SIGNATURE_INVALID"


def test_key_files(tmp_path) -> None:
    key = pf.PrivateKey.generate()
    public_path = pf.save_private_key(key, tmp_path / "me")
    assert public_path == tmp_path / "me.pub"
    assert stat.S_IMODE((tmp_path / "me").stat().st_mode) == 0o600
    assert (tmp_path / "me").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert pf.load_public_key(public_path) == key.public_key
    assert pf.load_public_key(tmp_path / "me") == key.public_key
    assert pf.load_private_key(tmp_path / "me").public_key == key.public_key
    with pytest.raises(FileExistsError):
        pf.save_private_key(pf.PrivateKey.generate(), tmp_path / "me")
    assert pf.load_private_key(tmp_path / "me").public_key == key.public_key
    assert key.public_key.key_id.startswith("ed25519:") and len(key.public_key.key_id) == 40
    assert "BEGIN" not in repr(key)
    assert pf.PublicKey.from_base64(key.public_key.to_base64()) == key.public_key


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"x" * 20_000,
    ],
)
def test_bad_key_files(tmp_path, content: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    for loader in (pf.load_public_key, pf.load_private_key):
        with pytest.raises(pf.KeyFileError) as raised:
            loader(path)
        assert raised.value.code == "KEY_INVALID"


def test_rsa_key_is_refused(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = tmp_path / "rsa.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(pf.KeyFileError, match="not Ed25519"):
        pf.load_private_key(path)
