"""The web catalog in a real browser: Debian's chromium driven by Playwright, against a real
``pfx-registry serve`` (the ``registry_server`` fixture, on folder+SQLite only: the pages read
through the same service calls on every backend).

What a visitor does — browse, search, sign in and out, manage tokens — and what must never
happen to them: markup from a concept or a token name running as script, a form on another
site acting through their session, a CSP violation on a normal page, an axe-core finding of
serious or critical impact, a page that scrolls sideways on a phone, a concept page heavier
than 50 KB of HTML, CSS and JS.

One browser for the module, a fresh context (cookies, cache) per test. Without chromium or
Playwright the module skips and says how to install them.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from concept_factory import REPO, build_concept
from registry_server import Account, RegistryServer, Reply, scripted, unique_name

import perfusion_format as pf

try:
    from axe_playwright_python.sync_playwright import Axe
    from playwright.sync_api import (
        Browser,
        BrowserContext,
        ConsoleMessage,
        Dialog,
        Locator,
        Page,
        Response,
        sync_playwright,
    )
except ImportError as missing:  # pragma: no cover - depends on the machine
    pytest.skip(
        f"browser tests need Playwright and axe-playwright-python ({missing}): make install",
        allow_module_level=True,
    )
if shutil.which("chromium") is None:  # pragma: no cover - depends on the machine
    pytest.skip(
        "browser tests need Debian's chromium: apt-get install -y chromium",
        allow_module_level=True,
    )

# One backend (a browser run per backend would double the time and test nothing new).
pytestmark = pytest.mark.parametrize("registry_server", ["folder+sqlite"], indirect=True)


def _load_demo() -> ModuleType:
    """demo/screenshots.py (its registry, preview and browser helpers)."""
    name = "pfx_demo_screenshots"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "demo" / "screenshots.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


demo = _load_demo()

#: Markup that must reach a page as text, never as elements or script.
PAYLOADS = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    '"><svg onload=alert(1)>',
)
#: Content-Security-Policy directives every page must carry.
FRAME_ANCESTORS = "frame-ancestors 'none'"
#: Pages at most this many bytes of HTML, CSS and JavaScript together.
PAGE_WEIGHT_LIMIT = 50_000
PHONE = {"width": 375, "height": 800}
#: Collects the page's CSP violations (init scripts are not subject to the page's CSP).
_CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


# -- the catalog the tests browse ------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """A published concept: its repository (``ns/name``), title, trigger token and digest."""

    repository: str
    title: str
    token: str
    digest: str
    word: str  # a word of its title no other concept has

    @property
    def path(self) -> str:
        return f"/{self.repository}"


@dataclass(frozen=True)
class Catalog:
    """The registry, a user with a write token, their organization, and two concepts: a public
    one of the user's and a private one of the organization's."""

    server: RegistryServer
    user: Account
    org: str
    public: Published
    private: Published

    @property
    def url(self) -> str:
        return self.server.url


def publish(
    server: RegistryServer,
    account: Account,
    ns: str,
    *,
    title: str | None = None,
    private: bool = False,
    description: str = "",
    previews: int = 1,
    **metadata: Any,
) -> Published:
    """Publish a new concept as ``ns/<unique name>:1`` (tag ``latest``) with PNG previews."""
    word = unique_name("w").replace("-", "")
    name = unique_name("concept")
    title = title or f"Velvet teddy {word}"
    token = f"<{word}>"
    concept = build_concept(name=title, token=token, description=description, **metadata)
    repository = f"{ns}/{name}"
    with demo.Publisher(server.url, account.token) as publisher:
        body = {"tags": ["latest"], "private": private, "description": description}
        digest = publisher.push(f"{repository}:1", pf.dumps(concept), **body)
        for index in range(previews):
            colour = ("#c98a4b", "#4b7fc9", "#6fae5a")[index % 3]
            shapes = [("ellipse", (0.25, 0.2, 0.75, 0.9), colour)]
            publisher.add_preview(repository, demo.preview_png("#f4efe6", shapes))
    return Published(repository, title, token, digest, word)


@pytest.fixture(scope="module")
def catalog(registry_server: RegistryServer) -> Catalog:
    user = registry_server.create_user("web")
    org = registry_server.create_org(user)
    return Catalog(
        registry_server,
        user,
        org,
        public=publish(registry_server, user, user.name, description="A **soft** teddy."),
        private=publish(registry_server, user, org, private=True),
    )


def publish_markup(catalog: Catalog) -> Published:
    """A public concept whose title, description, author and license are all :data:`PAYLOADS`
    (published when asked, so it is the newest on the home page)."""
    markup = " ".join(PAYLOADS)
    return publish(
        catalog.server,
        catalog.user,
        catalog.user.name,
        title=markup,
        description="\n\n".join(PAYLOADS),
        author=markup,
        license=markup,
    )


# -- the browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = demo.launch_chromium(playwright)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser, catalog: Catalog) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=catalog.url)
    context.set_default_timeout(15_000)
    yield context
    context.close()


@dataclass
class Watched:
    """A page, and what it did that a visitor must never see: dialogs (``alert``), console
    errors and warnings, uncaught script errors; :meth:`csp_violations` for the page shown."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("window.__cspViolations || []"))

    def on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")


@pytest.fixture
def watched(context: BrowserContext) -> Watched:
    """A new page of the test's context, watched."""
    watched = Watched(context.new_page())
    watched.page.on("dialog", watched.on_dialog)
    watched.page.on("console", watched.on_console)
    watched.page.on("pageerror", lambda error: watched.errors.append(str(error)))
    watched.page.add_init_script(_CSP_LISTENER)
    return watched


def visit(page: Page, path: str, status: int = 200) -> Response:
    """Open ``path``; the document's response, which must have ``status``."""
    response = page.goto(path, wait_until="load")
    assert response is not None
    assert response.status == status, f"{path}: {response.status}"
    return response


def sign_in(page: Page, token: str, next_path: str | None = None) -> None:
    """Sign in through the real form: paste the token and submit."""
    visit(page, "/-/login" + (f"?next={quote(next_path)}" if next_path else ""))
    page.fill("input[name=token]", token)
    with page.expect_navigation():
        page.click("main form button[type=submit]")
    assert page.get_by_role("button", name="Sign out").is_visible()


def sign_out(page: Page) -> None:
    """Press the header's Sign out button."""
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert page.get_by_role("link", name="Sign in").is_visible()


def card(scope: Page | Locator, concept: Published) -> Locator:
    """The card of ``concept`` in ``scope`` (may match nothing)."""
    return scope.locator(f'.card:has(a.card-link[href="{concept.path}"])')


def assert_loaded(image: Locator) -> None:
    """``image`` has loaded and decoded (card and gallery images load lazily: scroll first)."""
    image.scroll_into_view_if_needed()
    image.page.wait_for_function("image => image.complete", arg=image.element_handle())
    assert image.evaluate("image => image.naturalWidth") > 0, image


def token_names(catalog: Catalog) -> set[str]:
    """The names of the user's tokens, read through the API."""
    response = httpx.get(
        f"{catalog.url}/v1/tokens",
        headers={"Authorization": f"Bearer {catalog.user.token}"},
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    return {token["name"] for token in response.json()["tokens"]}


# -- browsing --------------------------------------------------------------------------------


def test_anonymous_visitor_finds_a_concept_and_reads_its_page(
    watched: Watched, catalog: Catalog
) -> None:
    page = watched.page
    # published now, so it is the newest on the home page whatever this session published before
    fresh = publish(catalog.server, catalog.user, catalog.user.name, previews=2)
    visit(page, "/")
    image = card(page.locator("section[aria-labelledby=newest]"), fresh).locator("img")
    assert image.get_attribute("alt") == f"Preview of {fresh.title}"
    assert_loaded(image)

    page.fill("#q", fresh.word)
    with page.expect_navigation():
        page.press("#q", "Enter")
    assert page.url == f"{catalog.url}/-/search?q={fresh.word}"
    assert page.locator(".card").count() == 1
    assert_loaded(card(page, fresh).locator("img"))
    with page.expect_navigation():
        card(page, fresh).locator("a.card-link").click()

    assert page.url == f"{catalog.url}{fresh.path}"
    assert page.locator("h1").inner_text() == fresh.title
    assert page.title() == f"{fresh.title} — {fresh.repository} · pfx"
    facts = page.locator("dl.facts")
    terms, details = facts.locator("dt").all_inner_texts(), facts.locator("dd").all_inner_texts()
    shown = dict(zip(terms, details, strict=True))
    assert shown["Trigger token"] == fresh.token
    assert shown["Superclass"] == "teddy"
    assert shown["Model family"] == "sd-1"
    assert shown["File digest"] == fresh.digest
    assert shown["Format"] == "perfusion 1.0"
    assert page.locator(".gallery img").count() == 2
    for image in page.locator(".gallery img").all():
        assert_loaded(image)
    assert not watched.dialogs and not watched.errors and not watched.console


def test_signing_in_shows_the_organizations_private_concept_until_signing_out(
    context: BrowserContext, watched: Watched, catalog: Catalog
) -> None:
    page, hidden = watched.page, catalog.private
    missing = f"/{catalog.org}/{unique_name('missing')}"
    search = f"/-/search?q={hidden.word}"

    # signed out: nowhere to be seen, and its page is exactly the page of a missing concept
    visit(page, search)
    assert card(page, hidden).count() == 0
    missing_page = visit(page, missing, 404).body()
    assert visit(page, hidden.path, 404).body() == missing_page

    sign_in(page, catalog.user.token, next_path=search)
    assert page.url == f"{catalog.url}{search}"  # back where the form was opened from
    cookies = {cookie["name"]: cookie for cookie in context.cookies()}
    assert cookies["pfx_session"]["httpOnly"] and cookies["pfx_session"]["sameSite"] == "Lax"
    assert catalog.user.token not in cookies["pfx_session"]["value"]
    found = card(page, hidden)
    assert found.count() == 1 and found.locator(".badge.private").is_visible()
    visit(page, f"/{catalog.org}")
    assert card(page, hidden).count() == 1
    visit(page, hidden.path)
    assert page.locator("h1").inner_text() == hidden.title

    sign_out(page)
    assert "pfx_session" not in {cookie["name"] for cookie in context.cookies()}
    visit(page, search)
    assert card(page, hidden).count() == 0
    visit(page, f"/{catalog.org}")
    assert card(page, hidden).count() == 0
    assert visit(page, hidden.path, 404).body() == missing_page
    hidden_html = page.content()
    visit(page, missing, 404)
    assert page.content() == hidden_html
    assert not watched.dialogs and not watched.errors


# -- markup stays text -----------------------------------------------------------------------


def assert_inert(watched: Watched, origin: str) -> None:
    """No dialog, no script but the catalog's own, no element that markup could have made,
    no ``javascript:`` link on the watched page."""
    page = watched.page
    scripts = page.eval_on_selector_all("script", "scripts => scripts.map(s => s.src)")
    assert len(scripts) == 1 and scripts[0].startswith(f"{origin}/-/static/catalog.js"), scripts
    assert page.locator("img[onerror], svg, [onload], [onerror], iframe").count() == 0
    assert page.locator('a[href^="javascript:" i]').count() == 0
    assert not watched.dialogs, watched.dialogs


def test_markup_in_titles_descriptions_and_token_names_is_shown_as_text(
    watched: Watched, catalog: Catalog
) -> None:
    page, markup = watched.page, publish_markup(catalog)
    markup_name = " ".join(PAYLOADS)
    for path in ("/", f"/-/search?q={markup.word}", f"/{catalog.user.name}"):
        visit(page, path)
        assert_inert(watched, catalog.url)
        shown = card(page, markup).first
        assert shown.locator(".card-title").inner_text() == markup.title, path
        assert shown.locator("img").get_attribute("alt") == f"Preview of {markup.title}", path
    for path in (markup.path, f"{markup.path}/-/versions/1"):
        visit(page, path)
        assert_inert(watched, catalog.url)
        assert page.locator("h1").inner_text() == markup.title, path
        assert page.title().startswith(markup.title), path
        description = page.locator("section.description").inner_text()
        for payload in PAYLOADS:
            assert payload in description, (path, payload)
        assert page.locator("dl.facts").inner_text().count(markup_name) == 2  # author, license
        alt = page.locator(".gallery img").first.get_attribute("alt")
        assert alt == f"Preview 1 of {markup.title}", path

    sign_in(page, catalog.user.token)
    visit(page, "/-/tokens")
    page.fill("#name", markup_name)
    with page.expect_navigation():
        page.get_by_role("button", name="Create token").click()
    assert_inert(watched, catalog.url)
    assert page.locator(".notice strong").inner_text() == markup_name
    visit(page, "/-/tokens")
    assert_inert(watched, catalog.url)
    row = page.locator("tbody tr").filter(has_text=PAYLOADS[0])
    assert row.locator("td").first.inner_text() == markup_name
    assert row.get_by_role("button", name=f"Revoke {markup_name}").is_visible()
    assert markup_name in token_names(catalog)
    assert not watched.errors


# -- forms from elsewhere --------------------------------------------------------------------


def form_elsewhere(action: str, fields: dict[str, str]) -> Reply:
    """A page of another web site: a form that posts ``fields`` to the registry's ``action``."""
    inputs = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
    html = (
        f'<!doctype html><title>elsewhere</title><form method="post" action="{action}">'
        f"{inputs}<button>Win a prize</button></form>"
    )
    return Reply(200, html.encode(), {"Content-Type": "text/html; charset=utf-8"})


def submit(page: Page, url: str, button: str) -> Response:
    """Click ``button`` and wait for the page it leads to; the answer to the form's POST."""
    with page.expect_response(lambda r: r.url == url and r.request.method == "POST") as answer:
        page.get_by_role("button", name=button).click()
    page.wait_for_load_state()
    return answer.value


def test_forms_posted_from_another_site_or_with_a_wrong_value_are_refused(
    context: BrowserContext, watched: Watched, catalog: Catalog
) -> None:
    page = watched.page
    tokens_url, login_url = f"{catalog.url}/-/tokens", f"{catalog.url}/-/login"
    forged_token = {"name": "forged", "scope": "write", "expires_days": "0", "csrf": "anything"}
    forged_login = {"token": catalog.user.token, "csrf": "anything", "next": "/"}
    sign_in(page, catalog.user.token)
    before = token_names(catalog)
    with (
        scripted(form_elsewhere(tokens_url, forged_token)) as token_site,
        scripted(form_elsewhere(login_url, forged_login)) as login_site,
    ):
        # another origin on the same host (another port: the same site, so the browser sends
        # the session cookie along) submits a token form through the signed-in browser
        page.goto(token_site.url)
        refused = submit(page, tokens_url, "Win a prize")
        assert refused.status == 403
        assert refused.request.header_value("sec-fetch-site") == "same-site"
        assert "CSRF_FAILED" in page.locator("main").inner_text()
        # another site altogether: the SameSite=Lax cookie stays behind, and the form, cross-site
        # and without a session, is refused the same way
        page.goto(token_site.url.replace("127.0.0.1", "localhost"))
        signed_out = submit(page, tokens_url, "Win a prize")
        assert signed_out.request.header_value("sec-fetch-site") == "cross-site"
        assert signed_out.status == 403

        # signing the visitor in as someone else (login forgery) fails from either kind of site
        for site in (login_site.url, login_site.url.replace("127.0.0.1", "localhost")):
            context.clear_cookies()
            page.goto(site)
            assert submit(page, login_url, "Win a prize").status == 403, site
            assert "pfx_session" not in {cookie["name"] for cookie in context.cookies()}

    # on the registry's own form: a wrong anti-forgery value, then none at all
    sign_in(page, catalog.user.token)
    csrf = page.locator('form[action="/-/tokens"] input[name=csrf]')
    visit(page, "/-/tokens")
    page.fill("#name", "wrong-csrf")
    csrf.evaluate("input => input.value = 'x'")
    wrong = submit(page, tokens_url, "Create token")
    assert wrong.status == 403
    assert wrong.request.header_value("sec-fetch-site") == "same-origin"
    visit(page, "/-/tokens")
    page.fill("#name", "no-csrf")
    csrf.evaluate("input => input.remove()")
    assert submit(page, tokens_url, "Create token").status == 403
    assert token_names(catalog) == before


# -- content security policy -----------------------------------------------------------------


def test_pages_raise_no_csp_violation_and_forbid_framing(
    watched: Watched, catalog: Catalog
) -> None:
    page, public = watched.page, catalog.public
    signed_out = [
        "/",
        f"/-/search?q={public.word}",
        f"/{catalog.user.name}",
        public.path,
        f"{public.path}/-/versions/1",
        "/-/login",
    ]
    signed_in = ["/-/tokens", f"/{catalog.org}", catalog.private.path]
    for path in [*signed_out, None, *signed_in]:
        if path is None:
            sign_in(page, catalog.user.token)
            continue
        headers = visit(page, path).all_headers()
        assert FRAME_ANCESTORS in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY", path
        assert watched.csp_violations() == [], path
    assert watched.console == [] and watched.errors == []

    # the policy is enforced: an error page carries it too, and inline script does not run
    headers = visit(page, f"/{catalog.org}/{unique_name('missing')}", 404).all_headers()
    assert FRAME_ANCESTORS in headers["content-security-policy"]
    ran = page.evaluate(
        """() => { const s = document.createElement("script");
                   s.textContent = "window.__inline = 1"; document.head.append(s);
                   return window.__inline === 1; }"""
    )
    assert ran is False
    page.wait_for_function("window.__cspViolations.length > 0")
    assert watched.csp_violations()[0].startswith("script-src")


# -- accessibility ---------------------------------------------------------------------------


def test_pages_have_no_serious_accessibility_violations(watched: Watched, catalog: Catalog) -> None:
    page, axe = watched.page, Axe()
    found: dict[str, list[str]] = {}

    def check(path: str, status: int = 200) -> None:
        visit(page, path, status)
        serious = [
            f"{v['id']} ({v['impact']}): {v['help']} — "
            + "; ".join(str(node["target"]) for node in v["nodes"][:5])
            for v in axe.run(page).response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        for line in serious:
            print(f"axe: {path}: {line}")
        if serious:
            found[path] = serious

    check("/")
    check(f"/-/search?q={catalog.public.word}")
    check(catalog.public.path)
    check("/-/login")
    check(f"/{catalog.org}/{unique_name('missing')}", 404)
    sign_in(page, catalog.user.token)
    check("/-/tokens")
    check(catalog.private.path)
    assert found == {}


# -- keyboard, phones, weight ----------------------------------------------------------------


def focused(page: Page) -> dict[str, str]:
    """What has the keyboard focus: its id, class and link target."""
    return dict(
        page.evaluate(
            """() => { const e = document.activeElement;
                       return {id: e.id, cls: e.className, href: e.getAttribute("href") || ""}; }"""
        )
    )


def test_keyboard_reaches_skip_link_search_and_cards_and_copy_buttons_need_script(
    browser: Browser, context: BrowserContext, watched: Watched, catalog: Catalog
) -> None:
    page = watched.page
    visit(page, "/")
    page.keyboard.press("Tab")
    order = [focused(page)]
    assert order[0] == {"id": "", "cls": "skip", "href": "#main"}
    box = page.locator("a.skip").bounding_box()
    assert box is not None and box["x"] >= 0  # on screen while focused
    while order[-1]["cls"] != "card-link" and len(order) < 12:
        page.keyboard.press("Tab")
        order.append(focused(page))
    ids = [element["id"] for element in order]
    assert "q" in ids and order[-1]["cls"] == "card-link", order
    assert order[-1]["href"] == page.locator("a.card-link").first.get_attribute("href")

    # with script, each snippet has a copy button that copies it
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    visit(page, catalog.public.path)
    copies = page.locator("button.copy")
    assert copies.count() == 3
    assert all(button.is_visible() for button in copies.all())
    copies.first.click()
    # the copy is asynchronous (and its "Copied" label lasts 2 s): wait for the clipboard itself
    page.wait_for_function("async () => (await navigator.clipboard.readText()).length > 0")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == page.locator("#snippet-cli").inner_text()
    assert f"pfx pull {catalog.public.repository}:latest" in copied
    # without, they stay hidden (the page still shows the snippets)
    without_script = browser.new_context(base_url=catalog.url, java_script_enabled=False)
    try:
        plain = without_script.new_page()
        visit(plain, catalog.public.path)
        assert plain.locator("button.copy").count() == 3
        assert not any(button.is_visible() for button in plain.locator("button.copy").all())
        assert plain.locator("#snippet-cli").is_visible()
    finally:
        without_script.close()


@pytest.fixture
def phone(browser: Browser, catalog: Catalog) -> Iterator[Page]:
    context = browser.new_context(base_url=catalog.url, viewport=PHONE, is_mobile=True)
    yield context.new_page()
    context.close()


def test_pages_fit_a_phone_without_scrolling_sideways(phone: Page, catalog: Catalog) -> None:
    long_title = publish(catalog.server, catalog.user, catalog.user.name, title="Long" * 30)
    paths = [
        "/",
        f"/-/search?q={catalog.public.word}",
        catalog.public.path,
        long_title.path,
        f"/{catalog.user.name}",
        "/-/login",
    ]
    wide = {}
    for path in paths:
        visit(phone, path)
        width = phone.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            wide[path] = width
    assert wide == {}


def test_a_concept_page_weighs_less_than_50_kb(watched: Watched, catalog: Catalog) -> None:
    weights: dict[str, int] = {}

    def count(response: Response) -> None:
        if response.request.resource_type in ("document", "stylesheet", "script"):
            weights[response.url] = len(response.body())

    watched.page.on("response", count)
    visit(watched.page, catalog.public.path)
    watched.page.wait_for_load_state("networkidle")
    files = {url.rsplit("/", 1)[-1].split("?")[0] for url in weights}
    assert {"style.css", "catalog.js"} <= files, weights
    assert sum(weights.values()) < PAGE_WEIGHT_LIMIT, weights
