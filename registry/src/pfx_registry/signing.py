"""Signed download URLs that a front server checks by itself (nginx's ``secure_link``).

A private download is authorized by the registry, which answers ``307`` to a URL under
``/v1/signed/`` that carries its expiry and a keyed hash::

    /v1/signed/<store key>?expires=<unix seconds>&md5=<hash>
    hash = base64url(md5(f"{expires}{path} {secret}")), without padding

— exactly what nginx computes for ``secure_link $arg_md5,$arg_expires;`` and
``secure_link_md5 "$secure_link_expires$uri <secret>";``, so nginx validates the URL and serves the
file with sendfile (or from S3 through an internal location) without asking the registry. The
secret is shared by the registry (``PFX_SIGNED_URL_SECRET``) and nginx; signing costs one MD5 of a
short string (microseconds, against about a millisecond for an S3 presign). The registry answers
the same URLs itself (:func:`check`) when no front server intercepts them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

__all__ = ["SIGNED_PREFIX", "check", "sign", "signed_url"]

#: Where signed URLs live (the nginx template's ``location`` of the same name).
SIGNED_PREFIX = "/v1/signed/"


def sign(path: str, expires: int, secret: str) -> str:
    """The hash nginx's ``secure_link_md5 "$secure_link_expires$uri <secret>"`` computes."""
    digest = hashlib.md5(f"{expires}{path} {secret}".encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signed_url(key: str, secret: str, seconds: int, now: float | None = None) -> str:
    """A URL (path and query) for the store key ``key`` that works for ``seconds`` from now."""
    path = SIGNED_PREFIX + key
    expires = int(now if now is not None else time.time()) + seconds
    return f"{path}?expires={expires}&md5={sign(path, expires, secret)}"


def check(path: str, expires: str, given: str, secret: str, now: float | None = None) -> str:
    """``"ok"``, ``"expired"`` (signed correctly, too late) or ``"invalid"`` for a signed URL's
    path and its ``expires`` and ``md5`` arguments (compared in constant time)."""
    if not expires.isdigit() or len(expires) > 12:
        return "invalid"
    if not hmac.compare_digest(sign(path, int(expires), secret), given):
        return "invalid"
    return "ok" if int(expires) >= (now if now is not None else time.time()) else "expired"
