"""The web catalog over HTTP (the browser's view is tests/registry/test_web_browser.py): what each
page shows and to whom, sessions and their cookie, forgery checks, markup injection, previews'
caching, and errors as pages — on folder+SQLite and S3+PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from concept_factory import build_concept
from fastapi.testclient import TestClient
from PIL import Image
from test_api import World, open_world

import perfusion_format as pf
from pfx_registry.auth import hash_token
from pfx_registry.db import web_sessions


@pytest.fixture(params=["folder+sqlite", "s3+postgres"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A registry app on two backends; its client keeps cookies as a browser does."""
    with open_world(request, tmp_path, request.param) as opened:
        yield opened


def concept_file(seed: int, key: pf.PrivateKey | None = None, **overrides: Any) -> bytes:
    concept = build_concept(seed=seed, **overrides)
    return pf.dumps(pf.sign(concept, key) if key else concept)


def png(width: int = 640, height: int = 480, colour: str = "orange") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def add_preview(site: World, token: str, repository: str, data: bytes) -> str:
    response = site.client.post(
        f"/v1/concepts/{repository}/previews",
        content=data,
        headers={**site.auth(token), "Content-Type": "image/png"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["digest"])


def form_value(html: str, field: str = "csrf") -> str:
    found = re.search(rf'name="{field}" value="([^"]*)"', html)
    assert found, f"no {field} field in the page"
    return found.group(1)


def sign_in(site: World, token: str, next_path: str = "/") -> Any:
    """Sign in through the form as a browser does; the client keeps the session cookie."""
    csrf = form_value(site.client.get("/-/login").text)
    return site.client.post(
        "/-/login",
        data={"token": token, "csrf": csrf, "next": next_path},
        follow_redirects=False,
    )


def sign_out(site: World) -> None:
    csrf = form_value(site.client.get("/-/tokens").text)
    assert site.client.post("/-/logout", data={"csrf": csrf}).status_code == 200


def org_with_private_concept(site: World) -> tuple[str, str, str]:
    """User ``alice`` (a token), her organization ``acme`` holding the private ``acme/secret``
    with a preview; returns alice's token, the preview's digest and the concept's digest."""
    alice = site.user("alice")
    site.client.post("/v1/orgs", json={"name": "acme"}, headers=site.auth(alice))
    response = site.push(alice, "acme/secret:1", concept_file(2, name="Secret sauce"))
    assert response.status_code == 201, response.text
    preview = add_preview(site, alice, "acme/secret", png(colour="navy"))
    return alice, preview, response.json()["digest"]


class Markup(HTMLParser):
    """The tags and attributes of a page, to check what a value could have injected."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.event_handlers: list[tuple[str, str]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script":
            self.scripts.append(attributes)
        for name, _value in attrs:
            if name.startswith("on"):
                self.event_handlers.append((tag, name))
        for name in ("href", "src", "action"):
            value = attributes.get(name)
            if value is not None:
                self.links.append(value)


def markup_of(html: str) -> Markup:
    parser = Markup()
    parser.feed(html)
    return parser


def test_pages_show_a_public_concept_and_how_to_use_it(site: World) -> None:
    alice = site.user("alice")
    key = pf.PrivateKey.generate()
    registered = site.client.post(
        "/v1/namespaces/alice/keys",
        json={"public_key": key.public_key.to_base64(), "name": "laptop"},
        headers=site.auth(alice),
    )
    assert registered.status_code == 201, registered.text
    stranger = pf.PrivateKey.generate()
    data = concept_file(1, key, license="CC-BY-4.0", author="Alice A.")
    signed_twice = pf.dumps(pf.sign(pf.loads(concept_file(5, key)), stranger))
    first = site.push(alice, "alice/teddy:1.0", data, tags=["latest"], private=False)
    assert first.status_code == 201, first.text
    site.push(
        alice,
        "alice/teddy:2.0",
        signed_twice,
        tags=["beta"],
        description="A **bear**.",
        labels=["toy"],
    )
    preview = add_preview(site, alice, "alice/teddy", png())
    home = site.client.get("/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert 'href="/alice/teddy"' in home.text
    assert f'src="/-/previews/{preview}/thumbnail"' in home.text
    assert "signed" in home.text
    found = site.client.get("/-/search", params={"q": "teddy"})
    assert 'href="/alice/teddy"' in found.text
    assert 'href="/alice/teddy"' in site.client.get("/alice").text

    page = site.client.get("/alice/teddy").text
    version = site.client.get("/v1/concepts/alice/teddy/versions/1.0").json()
    # the page shows the version tagged latest (1.0), not the newest (2.0)
    for fact in (
        version["token"].replace("<", "&lt;").replace(">", "&gt;"),
        version["superclass"],
        version["family"],
        version["base_fingerprint"],
        version["dtype"],
        version["digest"],
        "CC-BY-4.0",
        "Alice A.",
        "<strong>bear</strong>",
        'href="/-/search?q=toy"',
        "export PFX_REGISTRY=http://testserver\npfx pull alice/teddy:latest",
        'pfx.pull("alice/teddy:latest")',
        "/v1/concepts/alice/teddy/versions/1.0/file",
        'id="v-1.0"',
        'id="v-2.0"',
        'href="/alice/teddy/-/versions/1.0/file"',
    ):
        assert fact in page, fact
    key_row = re.search(rf"<tr><td><code[^>]*>{key.public_key.key_id}</code></td><td>(\w+)", page)
    assert key_row and key_row.group(1) == "yes"  # registered for alice

    other = site.client.get("/alice/teddy/-/versions/2.0").text
    assert "1 download" not in other
    stranger_row = re.search(
        rf"<tr><td><code[^>]*>{stranger.public_key.key_id}</code></td><td>(\w+)", other
    )
    assert stranger_row and stranger_row.group(1) == "no"
    assert "not stated" in other  # 2.0 carries no license

    download = site.client.get("/alice/teddy/-/versions/1.0/file")
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-disposition"] == (
        'attachment; filename="teddy.perfusion.safetensors"'
    )
    assert "1 download<" in site.client.get("/alice/teddy").text  # counted, flushed first


def test_a_private_concept_is_the_missing_page_for_outsiders(site: World) -> None:
    _, preview, digest = org_with_private_concept(site)
    outsider = site.user("mallory")
    assert sign_in(site, outsider).status_code == 303
    for hidden, missing in (
        ("/acme/secret", "/acme/absent"),
        ("/acme/secret/-/versions/1", "/acme/absent/-/versions/1"),
        ("/acme/secret/-/versions/1/file", "/acme/absent/-/versions/1/file"),
        (f"/-/previews/{preview}", f"/-/previews/sha256:{'0' * 64}"),
        (f"/-/previews/{preview}/thumbnail", f"/-/previews/sha256:{'0' * 64}/thumbnail"),
    ):
        for signed_in in (True, False):
            if not signed_in:
                site.client.cookies.clear()
            seen, absent = site.client.get(hidden), site.client.get(missing)
            assert seen.status_code == absent.status_code == 404, hidden
            assert seen.content == absent.content, hidden
            assert seen.headers == absent.headers | {"x-request-id": seen.headers["x-request-id"]}
            assert seen.headers["content-type"].startswith("text/html")
        sign_in(site, outsider)
    assert "acme/secret" not in site.client.get("/").text
    assert "acme/secret" not in site.client.get("/-/search", params={"q": "secret"}).text
    assert "acme/secret" not in site.client.get("/acme").text
    assert digest not in site.client.get("/acme").text


def test_signing_in_shows_private_concepts_until_signing_out(site: World) -> None:
    alice, preview, _ = org_with_private_concept(site)
    assert site.client.get("/acme/secret").status_code == 404
    signed_in = sign_in(site, alice, next_path="/acme/secret")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/acme/secret"
    cookie = signed_in.headers["set-cookie"]
    assert "pfx_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP
    assert alice not in cookie  # the cookie never holds the token
    secret = site.client.cookies["pfx_session"]
    with site.client.app.state.registry.engine.connect() as connection:  # type: ignore[attr-defined]
        stored = connection.execute(sqlalchemy.select(web_sessions.c.secret_hash)).scalars().all()
    assert stored == [hash_token(secret)]

    page = site.client.get("/acme/secret")
    assert page.status_code == 200 and "Secret sauce" in page.text
    assert "private" in page.text and "Authorization: Bearer $PFX_TOKEN" in page.text
    assert "acme/secret" in site.client.get("/-/search", params={"q": "secret"}).text
    members = site.client.get("/acme").text
    assert 'href="/acme/secret"' in members and ">alice<" in members and ">admin<" in members
    image = site.client.get(f"/-/previews/{preview}")
    assert image.status_code == 200 and image.headers["cache-control"].startswith("private,")

    sign_out(site)
    assert "pfx_session" not in site.client.cookies
    assert site.client.get("/acme/secret").status_code == 404
    # the cookie of an ended session opens nothing, even when sent again
    site.client.cookies.set("pfx_session", secret)
    assert site.client.get("/acme/secret").status_code == 404


def test_the_cookie_is_secure_behind_an_https_proxy(site: World) -> None:
    alice = site.user("alice")
    csrf = form_value(site.client.get("/-/login").text)
    response = site.client.post(
        "/-/login",
        data={"token": alice, "csrf": csrf},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]


def test_a_session_ends_with_its_token(site: World) -> None:
    alice, _, _ = org_with_private_concept(site)
    token = site.user("alice")
    sign_in(site, token)
    assert site.client.get("/acme/secret").status_code == 200
    listed = site.client.get("/v1/tokens", headers=site.auth(token)).json()["tokens"]
    token_id = next(row["id"] for row in listed if row["id"] == max(r["id"] for r in listed))
    revoked = site.client.delete(f"/v1/tokens/{token_id}", headers=site.auth(alice))
    assert revoked.status_code == 204
    assert site.client.get("/acme/secret").status_code == 404
    assert "Sign in" in site.client.get("/").text

    expiring = site.user("alice")
    sign_in(site, expiring)
    assert site.client.get("/acme/secret").status_code == 200
    site.expire(expiring)
    assert site.client.get("/acme/secret").status_code == 404


def test_sign_in_refuses_bad_tokens_and_foreign_return_addresses(site: World) -> None:
    refused = sign_in(site, "pfx_" + "x" * 43)
    assert refused.status_code == 401 and "unknown, revoked or expired" in refused.text
    assert "pfx_session" not in refused.headers.get("set-cookie", "")
    alice = site.user("alice")
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        response = sign_in(site, alice, next_path=evil)
        assert response.status_code == 303 and response.headers["location"] == "/", evil


def test_forms_without_their_anti_forgery_value_change_nothing(site: World) -> None:
    alice = site.user("alice")

    def token_count() -> int:
        return len(site.client.get("/v1/tokens", headers=site.auth(alice)).json()["tokens"])

    no_cookie = TestClient(site.client.app, cookies={})
    forged_login = no_cookie.post("/-/login", data={"token": alice, "csrf": "guess"})
    assert forged_login.status_code == 403 and "CSRF_FAILED" in forged_login.text
    assert "pfx_session" not in forged_login.headers.get("set-cookie", "")

    sign_in(site, alice)
    csrf = form_value(site.client.get("/-/tokens").text)
    before = token_count()
    new_token = {"name": "forged", "scope": "read", "expires_days": "7"}
    for fields, headers in (
        (new_token, {}),
        ({**new_token, "csrf": "wrong"}, {}),
        ({**new_token, "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
        ({**new_token, "csrf": csrf}, {"Sec-Fetch-Site": "same-site"}),
    ):
        response = site.client.post("/-/tokens", data=fields, headers=headers)
        assert response.status_code == 403 and "CSRF_FAILED" in response.text
    assert token_count() == before
    assert site.client.post("/-/logout", data={"csrf": "wrong"}).status_code == 403
    # a form that arrives without a session (ended, or its cookie withheld) changes nothing
    for path in ("/-/tokens", "/-/tokens/1/revoke"):
        signed_out = no_cookie.post(path, data={**new_token, "csrf": csrf})
        assert signed_out.status_code == 403 and "CSRF_FAILED" in signed_out.text
    assert site.client.get("/-/tokens").status_code == 200  # still signed in
    made = site.client.post(
        "/-/tokens", data={**new_token, "csrf": csrf}, headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert made.status_code == 201 and token_count() == before + 1


def test_tokens_are_managed_from_the_web(site: World) -> None:
    reader = site.user("alice", scope="read")
    sign_in(site, reader)
    page = site.client.get("/-/tokens")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    csrf = form_value(page.text)
    made = site.client.post(
        "/-/tokens", data={"csrf": csrf, "name": "laptop", "scope": "read", "expires_days": "7"}
    )
    assert made.status_code == 201
    secret = re.search(r"(pfx_[A-Za-z0-9_-]{43})", made.text)
    assert secret is not None
    whoami = site.client.get("/v1/whoami", headers=site.auth(secret.group(1)))
    assert whoami.status_code == 200 and whoami.json()["name"] == "alice"
    assert secret.group(1) not in site.client.get("/-/tokens").text  # shown once
    # a read session cannot mint a write token: the page says why, nothing is made
    refused = site.client.post(
        "/-/tokens", data={"csrf": csrf, "name": "more", "scope": "write", "expires_days": "0"}
    )
    assert refused.status_code == 403 and "cannot create a write token" in refused.text
    for bad in ({"expires_days": "3"}, {"expires_days": "x"}, {"name": ""}, {"name": "a\x07"}):
        fields = {"csrf": csrf, "name": "ok", "scope": "read", "expires_days": "1", **bad}
        assert site.client.post("/-/tokens", data=fields).status_code == 400, bad

    listed = site.client.get("/v1/tokens", headers=site.auth(reader)).json()["tokens"]
    laptop = next(row for row in listed if row["name"] == "laptop")
    revoked = site.client.post(f"/-/tokens/{laptop['id']}/revoke", data={"csrf": csrf})
    assert revoked.status_code == 200  # back on the tokens page
    assert site.client.get("/v1/whoami", headers=site.auth(secret.group(1))).status_code == 401
    foreign = site.client.post(f"/-/tokens/{2**31 - 1}/revoke", data={"csrf": csrf})
    assert foreign.status_code == 404


ATTACKS = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(1)>',
    "[click](javascript:alert(1))",
)


def test_no_field_can_inject_markup(site: World) -> None:
    alice = site.user("alice")
    attack = " ".join(ATTACKS)
    data = concept_file(
        3,
        name=attack[:128],
        token="<img/src=x/onerror=alert(1)>",
        superclass='"><svg onload=alert(1)>',
        license="<script>alert(1)</script>",
        author="<img src=x onerror=alert(1)>",
    )
    response = site.push(
        alice,
        "alice/attack:1",
        data,
        private=False,
        description="\n\n".join(
            (*ATTACKS, "<a href='javascript:alert(1)'>x</a>", "[x](JaVaScRiPt:alert(1))")
        ),
    )
    assert response.status_code == 201, response.text
    sign_in(site, alice)
    csrf = form_value(site.client.get("/-/tokens").text)
    site.client.post(
        "/-/tokens", data={"csrf": csrf, "name": attack[:128], "scope": "read", "expires_days": "1"}
    )
    pages = ["/", "/-/search?q=attack", "/alice", "/alice/attack", "/alice/attack/-/versions/1"]
    pages += ["/-/tokens", "/-/search?q=" + "<script>alert(1)</script>"]
    for path in pages:
        html = site.client.get(path).text
        markup = markup_of(html)
        assert markup.event_handlers == [], (path, markup.event_handlers)
        assert all(script.get("src", "").startswith("/-/static/") for script in markup.scripts)
        assert not any(link.lower().startswith("javascript:") for link in markup.links), path
        assert "<script>alert" not in html and "<svg" not in html and "<img src=x" not in html
    page = site.client.get("/alice/attack").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text


def test_page_headers_forbid_framing_and_foreign_content(site: World) -> None:
    for path in ("/", "/-/search", "/-/login", "/nobody"):
        headers = site.client.get(path).headers
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "default-src 'none'" in policy
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"


def test_previews_are_cached_by_digest_and_thumbnails_are_small(site: World) -> None:
    alice = site.user("alice")
    site.push(alice, "alice/teddy:1", concept_file(1), private=False)
    digest = add_preview(site, alice, "alice/teddy", png(1600, 1200))
    full = site.client.get(f"/-/previews/{digest}")
    assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == digest[7:]
    assert full.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert full.headers["etag"] == f'"{digest}"'
    etag = {"If-None-Match": full.headers["etag"]}
    again = site.client.get(f"/-/previews/{digest}", headers=etag)
    assert again.status_code == 304 and again.content == b""
    thumbnail = site.client.get(f"/-/previews/{digest}/thumbnail")
    assert thumbnail.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(thumbnail.content)) as image:
        assert image.size == (320, 240)
    assert len(thumbnail.content) < len(full.content)
    # a PNG signature followed by garbage is accepted as a preview but has no thumbnail
    broken = add_preview(site, alice, "alice/teddy", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert site.client.get(f"/-/previews/{broken}/thumbnail").status_code == 415


def test_errors_are_pages_for_browsers_and_json_for_the_api(site: World) -> None:
    page = site.client.get("/nobody/nothing")
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    api = site.client.get("/v1/concepts/nobody/nothing")
    assert api.status_code == 404 and api.json()["error"]["code"] == "NOT_FOUND"
    assert site.client.get("/v1/nothing/at/all").headers["content-type"] == "application/json"
    # the catalog's routes never take an API path: a wrong method there stays a JSON 405
    wrong = site.client.get("/v1/users")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    not_allowed = site.client.delete("/alice/teddy")
    assert not_allowed.status_code == 405 and "GET" in not_allowed.headers["allow"]
    assert not_allowed.headers["content-type"].startswith("text/html")
    bad_filter = site.client.get("/-/search", params={"family": "<x>"})
    assert bad_filter.status_code == 400 and "BAD_REQUEST" in bad_filter.text
    bad_cursor = site.client.get("/-/search", params={"cursor": "bm9wZQ"})
    assert bad_cursor.status_code == 400 and "INVALID_CURSOR" in bad_cursor.text
    for reserved in ("v2", "healthz", "docs", "static"):
        created = site.client.post(
            "/v1/users", json={"name": reserved}, headers=site.auth(site.admin)
        )
        assert created.status_code == 400 and created.json()["error"]["code"] == "NAME_INVALID"


def test_search_pages_follow_the_cursor(site: World) -> None:
    alice = site.user("alice")
    for seed in range(30):
        response = site.push(alice, f"alice/c{seed:02d}:1", concept_file(100 + seed), private=False)
        assert response.status_code == 201
    first = site.client.get("/-/search", params={"ns": "alice", "sort": "recent"}).text
    cards = re.findall(r'class="card-link" href="/alice/(c\d\d)"', first)
    assert len(cards) == 24 and cards[0] == "c29"
    next_link = re.search(r'rel="next" href="([^"]+)"', first)
    assert next_link is not None
    second = site.client.get(next_link.group(1).replace("&amp;", "&")).text
    rest = re.findall(r'class="card-link" href="/alice/(c\d\d)"', second)
    assert sorted(cards + rest) == [f"c{seed:02d}" for seed in range(30)]
    assert 'rel="next"' not in second
