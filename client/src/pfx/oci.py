"""Push and pull concepts to and from any OCI registry: ``oci://HOST[:PORT]/REPO[:TAG|@sha256:…]``
(:mod:`pfx.oci_reference`), a concept stored as spec/concept-format.md §9 says.

**Push** validates the file (perfusion_format), signs it when asked (as :func:`pfx.transfer.push`
does), uploads the empty config blob and the file unless the repository has them (``HEAD``), then
puts the canonical manifest (:func:`perfusion_format.oci.concept_manifest`, its layer titled
``<last component of REPO>.perfusion.safetensors``) as the tag. The manifest is a function of the
file and the repository's name: the pfx registry's own /v2/ serves the same bytes for
``ns/name``.

**Pull** has the guarantees of :func:`pfx.transfer.pull`: the manifest is fetched (and must hash
to the digest asked for when one is pinned), must be a concept's (NOT_A_CONCEPT otherwise,
nothing kept), and the file is downloaded *by the layer's digest* and accepted only when it hashes
to it and has the size the manifest says (DIGEST_MISMATCH), then when the trust policy accepts its
signatures for the name ``HOST[:PORT]/REPO`` — in that order, before anything is stored. The tag
and the manifest digest are remembered in the cache (:mod:`pfx.cache`), so ``PFX_OFFLINE=1``
resolves them with no network, and a pinned manifest digest whose file is cached never touches the
network.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import perfusion_format as pf
from pfx.cache import Cache
from pfx.config import OciLogin, load_config, offline, save_config
from pfx.errors import ClientError, ErrorCode
from pfx.oci_reference import OciReference, parse_oci_reference
from pfx.transfer import PullResult, accept, prepare
from pfx.trust import TrustPolicy

if TYPE_CHECKING:  # httpx loads only when a registry is contacted
    from pfx.http import Progress
    from pfx.oci_auth import Credentials
    from pfx.oci_client import OciClient

__all__ = ["OciLoginResult", "OciPullResult", "OciPushResult", "login", "logout", "pull", "push"]

#: Content types some registries send for any manifest: read the document's own media type.
_GENERIC_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})


def _client(
    host: str, plain_http: bool, *, push: bool = False, credentials: Credentials | None = None
) -> OciClient:
    from pfx.oci_client import OciClient

    return OciClient(host, plain_http=plain_http, push=push, credentials=credentials)


@dataclass(frozen=True)
class OciPushResult:
    """A concept pushed to an OCI registry."""

    reference: str
    """``oci://HOST/REPO:TAG``."""
    digest: str
    """The concept file's digest (the manifest's one layer)."""
    manifest_digest: str
    """The manifest's digest: ``oci://HOST/REPO@<this>`` pulls exactly this concept."""
    uploaded: bool
    """Whether the file was sent (False: the repository had it)."""
    signers: tuple[str, ...]
    """The key ids of the pushed file's signatures."""


def push(
    file: Path,
    reference: str,
    *,
    sign_with: Path | None = None,
    plain_http: bool = False,
    progress: Progress | None = None,
) -> OciPushResult:
    """Push the concept ``file`` to the OCI reference ``reference`` (``oci://HOST/REPO[:TAG]``,
    default tag ``latest``). ``sign_with`` is :func:`pfx.transfer.prepare`'s; ``plain_http``
    speaks http instead of https."""
    ref = parse_oci_reference(reference, for_push=True)
    data, concept = prepare(file, sign_with)
    digest = pf.content_digest(data)
    layer = pf.oci.concept_layer(concept, digest, len(data), ref.file_name)
    manifest = pf.oci.concept_manifest(layer)
    with _client(ref.host, plain_http, push=True) as registry:
        if not registry.blob_exists(ref.repository, pf.oci.EMPTY_DIGEST):
            registry.upload_blob(ref.repository, pf.oci.EMPTY_DIGEST, pf.oci.EMPTY_CONFIG)
        uploaded = not registry.blob_exists(ref.repository, digest)
        if uploaded:
            registry.upload_blob(ref.repository, digest, data, progress)
        manifest_digest = registry.put_manifest(ref.repository, ref.target, manifest)
    return OciPushResult(str(ref), digest, manifest_digest, uploaded, layer.signers)


@dataclass(frozen=True)
class OciPullResult(PullResult):
    """A concept pulled from an OCI registry: :class:`pfx.transfer.PullResult` and the digest of
    the manifest it came by (None when a tag was resolved offline)."""

    manifest_digest: str | None = None


def pull(
    reference: str,
    *,
    cache: Cache | None = None,
    trust: TrustPolicy | None = None,
    allow_unsigned: bool = False,
    output: Path | None = None,
    plain_http: bool = False,
    progress: Progress | None = None,
) -> OciPullResult:
    """Fetch the concept ``reference`` (``oci://HOST/REPO[:TAG]`` or ``…@sha256:<manifest>``)
    into the cache, verified; the options are those of :func:`pfx.transfer.pull`, and
    ``plain_http`` speaks http instead of https. Raises ClientError: NOT_A_CONCEPT,
    DIGEST_MISMATCH, UNTRUSTED / NOT_SIGNED / SIGNATURE_INVALID, NOT_CACHED, or the registry's
    own code (``UNAUTHORIZED``, ``MANIFEST_UNKNOWN``, …)."""
    ref = parse_oci_reference(reference)
    cache = cache or Cache()
    trust = trust or TrustPolicy.load()
    manifest_digest = ref.digest
    known = offline() or ref.digest is not None
    digest = cache.oci_ref(ref.host, ref.repository, ref.target) if known else None
    path = cache.get(digest) if digest else None
    if path is not None:
        data = path.read_bytes()
    elif offline():
        raise ClientError(
            ErrorCode.NOT_CACHED,
            f"{ref} is not in the cache and PFX_OFFLINE is set (pull it online first)",
        )
    else:
        manifest_digest, digest, path, data = _fetch(ref, cache, plain_http, progress)
    assert digest is not None
    from_cache = path is not None
    path, decision = accept(
        ref.name, digest, data, path, cache, trust, allow_unsigned=allow_unsigned
    )
    if manifest_digest is not None:
        cache.set_oci_ref(ref.host, ref.repository, manifest_digest, digest)
    if ref.digest is None and not offline():
        cache.set_oci_ref(ref.host, ref.repository, ref.target, digest)
    if output is not None:
        pf.write_atomic(output, data)
    return OciPullResult(
        str(ref), digest, output or path, len(data), from_cache, decision, manifest_digest
    )


def _fetch(
    ref: OciReference, cache: Cache, plain_http: bool, progress: Progress | None
) -> tuple[str, str, Path | None, bytes]:
    """Online: the manifest's digest, the concept file's digest, its cached path if any, and its
    bytes (from the cache, else downloaded by digest), checked against the layer's digest and
    size."""
    with _client(ref.host, plain_http) as registry:
        manifest, content_type = registry.manifest(ref.repository, ref.target)
        manifest_digest = pf.content_digest(manifest)
        if ref.digest is not None and manifest_digest != ref.digest:
            raise ClientError(
                ErrorCode.DIGEST_MISMATCH,
                f"{ref.host} sent a manifest for {ref} that is {manifest_digest}: refused, "
                "nothing kept",
            )
        layer = _concept_file(ref, manifest, content_type)
        path = cache.get(layer.digest)
        data = path.read_bytes() if path else registry.blob(ref.repository, layer.digest, progress)
    actual = pf.content_digest(data)
    if actual != layer.digest or len(data) != layer.size:
        raise ClientError(
            ErrorCode.DIGEST_MISMATCH,
            f"{ref.host} sent {len(data)} bytes ({actual}) for the concept file of {ref}, whose "
            f"manifest says {layer.size} bytes ({layer.digest}): refused, nothing kept",
        )
    return manifest_digest, layer.digest, path, data


def _concept_file(
    ref: OciReference, manifest: bytes, content_type: str | None
) -> pf.oci.Descriptor:
    """The concept file's descriptor in ``manifest``; NOT_A_CONCEPT when it is not a concept's."""
    kind = (content_type or "").split(";")[0].strip().lower()
    try:
        read = pf.oci.read_manifest(manifest, None if kind in _GENERIC_TYPES else kind)
    except pf.oci.ManifestError as error:
        message = f"{ref} is not a concept: {error.message}"
        raise ClientError(ErrorCode.NOT_A_CONCEPT, message) from None
    if not read.is_concept:
        what = read.artifact_type or read.config.media_type
        raise ClientError(
            ErrorCode.NOT_A_CONCEPT,
            f"{ref} is not a concept but {what} with {len(read.layers)} layer(s): a concept's "
            f"manifest has artifactType {pf.MEDIA_TYPE} and one layer of that type",
        )
    layer = read.concept_file()
    if layer.size > pf.MAX_FILE_SIZE:
        raise ClientError(
            ErrorCode.NOT_A_CONCEPT,
            f"{ref} names a {layer.size}-byte file: a concept file is at most "
            f"{pf.MAX_FILE_SIZE} bytes",
        )
    return layer


@dataclass(frozen=True)
class OciLoginResult:
    """What ``pfx login oci://HOST`` did."""

    host: str
    username: str
    checked: bool
    """Whether the registry asked for the credentials at ``/v2/`` and took them (False: it asks
    for none there, so they were saved unchecked)."""
    config: Path


def login(host: str, credentials: Credentials, *, plain_http: bool = False) -> OciLoginResult:
    """Check ``credentials`` against the registry at ``host`` (``GET /v2/``, authenticating as
    it asks; UNAUTHORIZED when it refuses them) and save them in the config file (mode 0600)."""
    with _client(host, plain_http, credentials=credentials) as registry:
        registry.ping()
        checked = registry.used_credentials
    config = load_config()
    login = OciLogin(credentials.username, credentials.password)
    path = save_config(replace(config, oci={**config.oci, host: login}))
    return OciLoginResult(host, credentials.username, checked, path)


def logout(host: str) -> bool:
    """Forget the credentials saved for ``host``; whether there were any."""
    config = load_config()
    if host not in config.oci:
        return False
    save_config(replace(config, oci={key: v for key, v in config.oci.items() if key != host}))
    return True
