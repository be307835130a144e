"""Push and pull: the client's two whole operations, shared by the CLI and the Python API.

**Pull** resolves a reference to a digest (a pinned ``@sha256:`` digest is used as is; with
``PFX_OFFLINE=1`` a tag is read from the cache's refs), takes the bytes from the cache or
downloads them *by that digest*, and accepts them only when

1. they hash to the digest that was asked for (never a server header), and
2. the local trust policy accepts their signatures for that repository (pfx.trust),

in that order, before anything is stored, written or handed to a loader. A cached concept is
re-hashed and re-judged on every pull, so a corrupted cache entry is fetched again and a revoked
key takes effect at once. A pinned digest that is cached never touches the network.

**Push** validates the file locally (perfusion_format), signs it when asked, uploads the bytes
unless the registry already has them (``HEAD``), publishes the version, and attaches previews.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import perfusion_format as pf
from pfx.cache import Cache
from pfx.config import effective_registry, effective_token, load_config, offline
from pfx.errors import ClientError, ErrorCode
from pfx.reference import Reference, parse_reference
from pfx.trust import TrustDecision, TrustPolicy, require_trusted

if TYPE_CHECKING:  # httpx loads only when a registry is contacted: cached pulls never need it
    from pfx.client import Client
    from pfx.http import Progress
    from pfx.results import PublishedVersion

__all__ = ["PullResult", "PushResult", "accept", "connect", "prepare", "pull", "push"]


def connect(registry: str | None = None, token: str | None = None) -> Client:
    """A client of the registry named by ``registry``, ``PFX_REGISTRY`` or the config file (in
    that order), with the token found the same way; USAGE_ERROR when no registry is named."""
    from pfx.client import Client

    return Client(effective_registry(registry), effective_token(token))


@contextmanager
def _session(client: Client | None) -> Iterator[Client]:
    """``client``, left open; or, when it is None, a new one of :func:`connect`, closed on
    leaving."""
    if client is not None:
        yield client
        return
    with connect() as own:
        yield own


@dataclass(frozen=True)
class PullResult:
    """A pulled concept: where its verified bytes are, what they are, and the trust decision."""

    reference: str
    digest: str
    path: Path
    size: int
    from_cache: bool
    trust: TrustDecision


def pull(
    reference: str,
    *,
    client: Client | None = None,
    cache: Cache | None = None,
    trust: TrustPolicy | None = None,
    allow_unsigned: bool = False,
    output: Path | None = None,
    progress: Progress | None = None,
) -> PullResult:
    """Fetch ``reference`` (``NS/NAME[:TAG]`` or ``NS/NAME@sha256:…``) into the cache, verified.

    ``client`` defaults to :func:`connect` (made only when the network is needed); ``cache`` and
    ``trust`` to the user's. ``output`` also writes the bytes to that path. Raises ClientError:
    DIGEST_MISMATCH (the bytes are not those asked for), UNTRUSTED / NOT_SIGNED /
    SIGNATURE_INVALID (refused by the trust policy; ``allow_unsigned`` accepts unsigned and
    untrusted concepts), NOT_CACHED (offline and not in the cache), or the registry's own code.
    """
    ref = parse_reference(reference)
    cache = cache or Cache()
    trust = trust or TrustPolicy.load()
    registry = client.url if client else effective_registry()
    digest = ref.digest
    if digest is None and offline() and registry:
        digest = cache.ref(registry, ref.namespace, ref.name, ref.target)
    path = cache.get(digest) if digest else None
    data = path.read_bytes() if path else None
    if data is None:
        if offline():
            raise ClientError(
                ErrorCode.NOT_CACHED,
                f"{ref} is not in the cache and PFX_OFFLINE is set (pull it online first)",
            )
        registry, digest, path, data = _fetch(client, cache, ref, digest, progress)
    from_cache = path is not None
    path, decision = accept(
        ref.repository, digest, data, path, cache, trust, allow_unsigned=allow_unsigned
    )
    if registry and not ref.digest:
        cache.set_ref(registry, ref.namespace, ref.name, ref.target, digest)
    if output is not None:
        pf.write_atomic(output, data)
    return PullResult(str(ref), digest, output or path, len(data), from_cache, decision)


def accept(
    name: str,
    digest: str,
    data: bytes,
    cached: Path | None,
    cache: Cache,
    trust: TrustPolicy,
    *,
    allow_unsigned: bool,
) -> tuple[Path, TrustDecision]:
    """Judge the bytes ``data`` of ``digest`` (checked against it already) published as ``name``
    by the trust policy (a refusal raises, nothing stored), then keep them in the cache unless
    they came from there (``cached``): their path in the cache and the trust decision."""
    decision = trust.evaluate(name, data, allow_unsigned=allow_unsigned)
    require_trusted(decision)
    return cached or cache.store(digest, data), decision


def _fetch(
    client: Client | None,
    cache: Cache,
    ref: Reference,
    digest: str | None,
    progress: Progress | None,
) -> tuple[str, str, Path | None, bytes]:
    """Online: the registry's URL, the digest ``ref`` names (resolved unless given), its cached
    path if any, and its bytes (from the cache, else downloaded and checked against the digest).
    A client made here is closed here."""
    with _session(client) as registry:
        if digest is None:
            digest = registry.resolve(ref.namespace, ref.name, ref.target).digest
        path = cache.get(digest)
        data = path.read_bytes() if path else _download(registry, ref, digest, progress)
        return registry.url, digest, path, data


def _download(client: Client, ref: Reference, digest: str, progress: Progress | None) -> bytes:
    """The bytes of ``digest`` from the registry, refused unless they hash to it."""
    data = client.download(ref.namespace, ref.name, digest, progress)
    if pf.content_digest(data) != digest:
        raise ClientError(
            ErrorCode.DIGEST_MISMATCH,
            f"the registry sent bytes for {ref} that are not {digest}: refused, nothing kept",
        )
    return data


def prepare(file: Path, sign_with: Path | None) -> tuple[bytes, pf.Concept]:
    """The bytes to push of the concept ``file`` and the concept they hold: the file validated
    (perfusion_format's codes on failure) and, with ``sign_with`` (a private key file; default:
    the config file's ``default_key``), signed by that key. The file on disk is not changed."""
    data = pf.read_bounded(file)
    concept = pf.loads(data)
    key_path = sign_with or load_config().default_key
    if key_path is not None:
        signed = pf.sign(concept, pf.load_private_key(key_path))
        if signed is not concept:
            concept, data = signed, pf.dumps(signed)
    return data, concept


@dataclass(frozen=True)
class PushResult:
    """A pushed concept: its reference, digest, whether bytes were sent, and the version."""

    reference: str
    digest: str
    uploaded: bool
    version: PublishedVersion
    previews: tuple[str, ...]


def push(
    file: Path,
    reference: str,
    *,
    client: Client | None = None,
    tags: Sequence[str] | None = None,
    private: bool | None = None,
    sign_with: Path | None = None,
    previews: Sequence[Path] = (),
    description: str | None = None,
    labels: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Publish the concept ``file`` as ``reference`` (``NS/NAME:VERSION``).

    The file is validated first (perfusion_format's codes on failure, nothing sent). With
    ``sign_with`` (a private key file; default: the config file's ``default_key``) the pushed
    bytes carry that key's signature; the file on disk is not changed. ``tags`` default to the
    registry's (``latest``); ``private``, ``description`` and ``labels`` left None keep the
    repository's settings (a new repository is private)."""
    ref = parse_reference(reference, needs_version=True)
    assert ref.tag is not None
    data, _ = prepare(file, sign_with)
    images = [pf.read_bounded(path) for path in previews]
    digest = pf.content_digest(data)
    with _session(client) as registry:
        uploaded = not registry.blob_exists(digest)
        if uploaded:
            registry.upload_blob(data, digest, progress)
        version = registry.publish(
            ref.namespace,
            ref.name,
            ref.tag,
            digest,
            tags=list(tags) if tags is not None else None,
            private=private,
            description=description,
            labels=list(labels) if labels is not None else None,
        )
        attached = tuple(
            registry.attach_preview(ref.namespace, ref.name, image).digest for image in images
        )
    return PushResult(str(ref), digest, uploaded, version, attached)
