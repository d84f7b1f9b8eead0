"""Accessibility, measured: every page each role can reach, in Debian's Chromium, checked by axe-core
(the npm package in node_modules, injected into the page; nothing is downloaded at test time; the
browser context bypasses the service's Content-Security-Policy only so that the checker's script can be
added). Any serious or critical violation fails, with its page, rule, help text and offending elements.

"Every page" is found, not listed: starting at the home page, the test follows every link on every page
it reaches (same site, GET; not sign-out, downloads, raw files, the API or static files) as each demo
role, so a page added and linked is checked without editing this file; the test also fails if a role's
walk misses a page the role must reach (``MUST_REACH``), so a walk cut short cannot pass quietly. The
service runs without JupyterHub (its workspace runtime is pointed at nothing); a researcher's table is
submitted through the workspace API and claimed by a checker first, so the checker's view of a table
is among the pages. The confirmation pages of destructive actions are GET pages linked from where the
action is offered, so the walk reaches them (following a link never changes anything); pages reached
only by posting a form (closing a project's confirmation step, an application's error summary) are
checked by the pattern tests at the end.

Keyboard, measured on every page of the walk in the same pass (``keyboard_check``): one script lists
every link, button and form control shown (a radio group is one stop; a control inside a closed
disclosure is not shown) and records each focus; the Tab key is pressed round the page once; one script
reads the record. A page fails if a control is not reached, if Tab goes back up the page, if a stop's
outline, box shadow and background all look as they did unfocused (no visible focus indicator), if the
first stop is not the skip link, or if following the skip link (Enter) does not put the next Tab inside
the main content. Further tests use the new pages with the Tab and Enter keys alone (each chart's
numbers open from the keyboard; the wide tables' scroll regions take focus)."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest

from tests.e2e.conftest import LiveService, free_port, sign_in

pytestmark = pytest.mark.e2e

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")
# One demo account per role; the chair also holds the member role, so sees both committee sections.
PEOPLE = [
    "rita.researcher",
    "dana.dac",
    "chris.chair",
    "olive.checker",
    "cara.custodian",
    "adam.admin",
    "audrey.auditor",
]
# Links never followed: they sign out, download, serve a file raw, or are not pages.
SKIP = re.compile(r"^/(auth/logout|api/|static/|metrics/|healthz)|/bundle$|[?&]raw=1|/export|\.(zip|csv|json)$")
MAX_PAGES = 120  # per role; the demo world has far fewer pages than this
# Pages each role's walk must reach (regular expressions on the path), so that a broken link or a
# walk that stopped early is a failure, not a smaller pass.
MUST_REACH = {
    "rita.researcher": [
        r"^/projects/\w+$", r"^/projects/\w+/agreement$", r"^/outputs/$", r"^/outputs/requests/\w+$",
        r"^/outputs/requests/\w+/withdraw$", r"^/projects/\w+/members/\w+/remove$",  # confirmation pages
    ],
    "dana.dac": [r"^/dac/$", r"^/dac/turnaround$", r"^/dac/\w+$"],
    "chris.chair": [r"^/dac/$", r"^/dac/turnaround$", r"^/dac/\w+/suspend$", r"^/projects/\w+/members/\w+/remove$"],
    "olive.checker": [r"^/outputs/queue$", r"^/outputs/metrics$", r"^/outputs/requests/\w+$", r"^/outputs/files/\w+$"],
    "cara.custodian": [r"^/extracts/$", r"^/catalogue/"],
    "adam.admin": [r"^/admin/", r"^/admin/users/\w+/active$"],
    "audrey.auditor": [r"^/audit/"],
}
RITA, OLIVE = "rita.researcher@demo.tre.example", "olive.checker@demo.tre.example"
SMALL_CELL = "region,female,male\nNorth,25,3\nSouth,40,52\n"


@pytest.fixture(scope="module")
def a11y_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """The service really started (web, worker, sweeper) without JupyterHub, with one output request
    awaiting review whose table a checker holds a place on."""
    service = LiveService(tmp_path_factory.mktemp("a11y") / "instance", free_port())
    service.env["TRE_WORKSPACE_RUNTIME"] = str(service.instance.parent / "no-workspace-runtime")
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def claimed_table(browser: Any, a11y_service: LiveService, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A table with a small cell, submitted from the workspace API, checked, and claimed by Olive."""
    from jupyter.client import submit
    from tests.e2e.test_output_checking import _wait_for_state, _workspace_token

    table = tmp_path_factory.mktemp("a11y-table") / "admissions.csv"
    table.write_text(SMALL_CELL)
    token = _workspace_token(a11y_service, RITA, "Heart failure readmissions")
    answer = submit([table], "Admissions by region and sex, adults", "None yet", title="Admissions",
                    api=a11y_service.url, token=token)
    url = f"{a11y_service.url}/outputs/requests/{answer['id']}"
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, a11y_service, OLIVE)
        page.goto(url)
        _wait_for_state(page, "awaiting_review")
        page.click("#claim")
        page.wait_for_selector(".open-table-review")
    finally:
        context.close()
    return url


def blocking_violations(page: Any) -> list[str]:
    """Run axe-core on the page as it stands; describe each serious or critical violation."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `make setup` (npm ci installs axe-core from package.json)")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    found = []
    for v in result["violations"]:
        if v.get("impact") in BLOCKING:
            targets = "; ".join(" ".join(n["target"]) for n in v["nodes"][:5])
            found.append(f"{v['impact']} {v['id']}: {v['help']} ({len(v['nodes'])} elements, e.g. {targets})")
    return found


KEYBOARD_PREPARE = r"""() => {
  // Every element a keyboard user must be able to reach, in document order, with its look unfocused.
  const controls = 'a[href], area[href], button, input, select, textarea, summary, iframe, [contenteditable="true"]';
  const candidates = controls + ', [tabindex]';
  const shown = el => {
    const closedAbove = d => d.parentElement && d.parentElement.closest('details:not([open])');
    for (let d = el.closest('details:not([open])'); d; d = closedAbove(d)) {
      const own = d.querySelector(':scope > summary');
      if (own !== el) return false;  // inside a closed disclosure: reached once it is opened
    }
    if (el.closest('[hidden], [inert]')) return false;
    const st = getComputedStyle(el);
    return st.visibility !== 'hidden' && st.display !== 'none' && el.getClientRects().length > 0;
  };
  const look = el => {
    const st = getComputedStyle(el);
    return [st.outlineStyle, st.outlineWidth, st.outlineColor, st.boxShadow, st.backgroundColor].join('|');
  };
  const describe = el => {
    const text = (el.getAttribute('aria-label') || el.innerText || el.value || el.name || el.id || '').trim();
    return `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''} "${text.slice(0, 50)}"`;
  };
  const positive = [...document.querySelectorAll('[tabindex]')].filter(el => el.tabIndex > 0).map(describe);
  const wanted = [];
  const groups = new Map();
  for (const el of document.querySelectorAll(candidates)) {
    if (el.disabled || (el.tagName === 'INPUT' && el.type === 'hidden') || !shown(el)) continue;
    // tabindex="-1" takes an element out of the Tab order: fine for a focus target (the error summary,
    // the main content), a failure for a control.
    if (el.tabIndex < 0 && !el.matches(controls)) continue;
    // A radio group is one Tab stop (its arrow keys move within it).
    let key = wanted.length;
    if (el.tagName === 'INPUT' && el.type === 'radio' && el.name) {
      const name = (el.form ? el.form.id || [...document.forms].indexOf(el.form) : '') + ':' + el.name;
      if (groups.has(name)) { key = groups.get(name); el.dataset.kbKey = key; continue; }
      groups.set(name, key);
    }
    el.dataset.kbKey = key;
    wanted.push({key, what: describe(el), look: look(el), skip: el.classList.contains('nhsuk-skip-link')});
  }
  const seen = [];
  window.__kb = {wanted, seen, positive};
  document.addEventListener('focusin', ev => {
    const el = ev.target;
    const key = el.dataset ? el.dataset.kbKey : undefined;
    seen.push(key === undefined ? {key: -1, what: describe(el)} : {key: Number(key), look: look(el)});
  }, true);
  if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
  // Tab presses needed to go round once: a date or time field takes one per part (day, month, year).
  const parts = el => ({date: 3, time: 3, 'datetime-local': 5, month: 2, week: 2}[el.type] || 1);
  const marked = [...document.querySelectorAll('[data-kb-key]')];
  return marked.reduce((n, el) => n + (el.tagName === 'INPUT' ? parts(el) : 1), 0);
}"""

KEYBOARD_RESULT = r"""() => {
  const {wanted, seen, positive} = window.__kb;
  const problems = positive.map(p => `positive tabindex changes the Tab order: ${p}`);
  const order = [];
  for (const s of seen) {
    if (s.key >= 0 && order.length && s.key === order[0].key) break;  // Tab came round to the start
    order.push(s);
  }
  const reached = new Set(order.filter(s => s.key >= 0).map(s => s.key));
  for (const w of wanted) {
    if (!reached.has(w.key)) problems.push(`not reachable by Tab: ${w.what}`);
  }
  let last = -1;
  for (const s of order) {
    if (s.key < 0) continue;
    const w = wanted.find(x => x.key === s.key);
    if (s.key < last) problems.push(`Tab goes back up the page to ${w.what}`);
    last = Math.max(last, s.key);
    if (s.look === w.look) problems.push(`no visible focus indicator: ${w.what}`);
  }
  const first = order.find(s => s.key >= 0);
  if (!first || !wanted.find(x => x.key === first.key).skip) problems.push('the first Tab stop is not the skip link');
  return problems;
}"""


SKIP_LINK_WORKS = """() => {
  const main = document.getElementById('maincontent');
  const el = document.activeElement;
  return !!main && !!el && el !== document.body
    && (main === el || main.contains(el) || !!(main.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING));
}"""


def keyboard_problems(page: Any) -> list[str]:
    return keyboard_check(page)[1]


def keyboard_check(page: Any) -> tuple[int, list[str]]:
    """Use the page with the keyboard alone: Tab through it once, recording each stop (one script
    prepares, the key presses run, one script reads the result). Every link, button and form control
    shown must be a Tab stop (a radio group is one), in document order, with a focus indicator that
    changes its outline, box shadow or background; the first stop is the skip link, and following it
    (Enter) moves the next Tab into the main content."""
    presses = page.evaluate(KEYBOARD_PREPARE)
    for _ in range(presses + 4):  # a few more than needed: round to the start again, or to the browser
        page.keyboard.press("Tab")
    stops: int = page.evaluate("window.__kb.wanted.length")
    problems: list[str] = page.evaluate(KEYBOARD_RESULT)
    if page.locator("a.nhsuk-skip-link").count() == 0:
        return stops, [*problems, "no skip link"]
    page.evaluate("document.querySelector('a.nhsuk-skip-link').focus()")
    page.keyboard.press("Enter")
    if not page.evaluate(SKIP_LINK_WORKS):
        page.keyboard.press("Tab")
        if not page.evaluate(SKIP_LINK_WORKS):
            problems.append("the skip link does not move the keyboard to the main content")
    return stops, problems


LAYOUT = """() => {
  const width = window.innerWidth, height = window.innerHeight, problems = [];
  const wider = document.documentElement.scrollWidth - width;
  if (wider > 1) problems.push(`the page scrolls sideways: ${wider} px wider than the ${width} px window`);
  for (const row of document.querySelectorAll('main tr')) {
    const tall = row.getBoundingClientRect().height;
    if (tall > height) {
      problems.push(`a table row is ${Math.round(tall)} px tall, more than the ${height} px window: a column `
        + `is squeezed to a sliver (${row.innerText.slice(0, 60).replace(/\\s+/g, ' ')})`);
      break;
    }
  }
  return problems;
}"""


def layout_problems(page: Any) -> list[str]:
    """What makes a page hard to read at the browser's width: the page itself scrolling sideways (a wide
    table belongs in a scrolling region of its own), or a table row taller than the window (a column
    squeezed to one character's width, so its text runs down the page a letter at a time)."""
    return list(page.evaluate(LAYOUT))


def walk(page: Any, base: str) -> tuple[list[str], dict[str, list[str]], int]:
    """Visit every page reachable by links from the home page; axe-core and the keyboard check on each.
    Returns the paths visited, the problems found per path and the number of Tab stops checked."""
    host = urlsplit(base).netloc
    queue, seen = deque(["/"]), {"/"}
    visited: list[str] = []
    problems: dict[str, list[str]] = {}
    tab_stops = 0
    while queue and len(visited) < MAX_PAGES:
        path = queue.popleft()
        response = page.goto(base + path)
        if response is None or response.status >= 400 or "text/html" not in response.headers.get("content-type", ""):
            if response is not None and response.status >= 500:
                problems[path] = [f"answered {response.status}"]
            continue
        visited.append(path)
        hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
        found = blocking_violations(page) + layout_problems(page)
        stops, by_keyboard = keyboard_check(page)
        tab_stops += stops
        found += [f"keyboard: {p}" for p in by_keyboard]
        if found:
            problems[path] = found
        for href in hrefs:
            target = urlsplit(urldefrag(urljoin(base + path, href))[0])
            if target.netloc != host or target.scheme not in ("http", "https"):
                continue
            link = target.path + (f"?{target.query}" if target.query else "")
            if link not in seen and not SKIP.search(link):
                seen.add(link)
                queue.append(link)
    return visited, problems, tab_stops


def test_home_page_signed_out_has_no_serious_accessibility_violation(browser: Any, a11y_service: LiveService) -> None:
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.goto(a11y_service.url + "/")

        assert blocking_violations(page) == []
    finally:
        context.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("person", PEOPLE)
def test_every_page_a_role_reaches_has_no_serious_accessibility_violation_and_works_by_keyboard(
    browser: Any, a11y_service: LiveService, claimed_table: str, person: str
) -> None:
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        sign_in(page, a11y_service, f"{person}@demo.tre.example")
        page.goto(a11y_service.url + "/")
        assert page.locator("h1").inner_text() == "Your tasks"

        visited, problems, tab_stops = walk(page, a11y_service.url)

        # Shown with -s; the figures for docs.
        print(f"{person}: axe-core and the keyboard check ran on {len(visited)} pages, {tab_stops} Tab stops")
        missed = [p for p in MUST_REACH[person] if not any(re.search(p, v) for v in visited)]
        assert missed == [], f"{person}'s walk reached {len(visited)} pages but none matching {missed}: {visited}"
        assert problems == {}, "\n".join(f"{path}: {v}" for path, found in problems.items() for v in found)
    finally:
        context.close()


def test_the_check_reports_a_critical_violation(page: Any) -> None:
    """The check itself can fail: an image without a text alternative is reported."""
    page.set_content('<html lang="en"><head><title>t</title></head><body><main><img src="x.png"></main></body></html>')

    found = blocking_violations(page)

    assert any(" image-alt:" in f for f in found), found


LAYOUT_PAGE = """<html lang="en"><head><title>t</title><style>
.mono {{ font-family: monospace; word-break: break-all; }} {extra}</style></head><body><main>
<table><tr><td>2026-12-07 02:20:30</td><td>{target}</td><td class="mono">{detail}</td></tr></table>
</main></body></html>"""


def test_the_layout_check_reports_a_page_wider_than_the_window_and_a_squeezed_column(page: Any) -> None:
    """The layout check itself can fail: a long identifier that cannot break widens the page, and a JSON
    detail allowed to break anywhere is squeezed to a sliver and runs down the page; the same table with
    the identifier allowed to wrap and the detail given a width passes."""
    page.set_viewport_size({"width": 800, "height": 600})
    target, detail = "dataset " + "b0d6" * 40, '{"files": 1, "reasons": ["' + "x" * 300 + '"]}'
    page.set_content(LAYOUT_PAGE.format(extra="", target=target, detail=detail))

    found = layout_problems(page)

    assert any(f.startswith("the page scrolls sideways") for f in found), found
    assert any(f.startswith("a table row is") for f in found), found

    page.set_content(LAYOUT_PAGE.format(extra="td { overflow-wrap: anywhere; } .mono { min-width: 16em; }",
                                        target=target, detail=detail))
    assert layout_problems(page) == []


KEYBOARD_PAGE = """<html lang="en"><head><title>t</title><style>
a:focus, button:focus {{ outline: 3px solid #ffeb3b; }}
{extra}
</style></head><body>
<a class="nhsuk-skip-link" href="#maincontent">Skip to main content</a><a href="/">Home</a>
<main id="maincontent"><a href="/a">First</a>{body}<button type="button">Last</button></main>
</body></html>"""


def test_the_keyboard_check_passes_a_page_usable_by_keyboard(page: Any) -> None:
    page.set_content(KEYBOARD_PAGE.format(extra="", body='<details><summary>More</summary><a href="/in">Inside</a>'
                                          "</details><input type=radio name=r id=r1><input type=radio name=r id=r2>"
                                          "<input type=date id=d><a href=/after>After the date</a>"))

    assert keyboard_problems(page) == []


def test_the_keyboard_check_reports_what_a_keyboard_cannot_reach_or_see(page: Any) -> None:
    """The check itself can fail: a control taken out of the Tab order, a focus indicator removed, a
    positive tabindex that reorders the page."""
    page.set_content(KEYBOARD_PAGE.format(
        extra="#plain:focus { outline: none; }",
        body='<button type="button" tabindex="-1" id="mouse-only">Mouse only</button>'
        '<button type="button" id="plain">No ring</button><a href="/jump" tabindex="2" id="jumper">Jumps</a>',
    ))

    found = keyboard_problems(page)

    assert any(f.startswith("not reachable by Tab: button#mouse-only") for f in found), found
    assert any(f.startswith("no visible focus indicator: button#plain") for f in found), found
    assert any(f.startswith("positive tabindex changes the Tab order: a#jumper") for f in found), found
    assert "the first Tab stop is not the skip link" in found, found  # the tabindex=2 link comes first


def test_incomplete_application_form_and_its_check_page_have_no_serious_violation(
    browser: Any, a11y_service: LiveService
) -> None:
    """The form patterns: the error summary on the form (linked to its fields) and 'check your answers'."""
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        sign_in(page, a11y_service, "rob.other@demo.tre.example")
        page.goto(a11y_service.url + "/projects/new")
        page.fill("#title", "Accessibility of an incomplete application")
        page.click("main button[type=submit]")
        page.wait_for_url("**/edit")
        project_page = page.url.removesuffix("/edit")
        page.goto(project_page)
        assert blocking_violations(page) == [], "check your answers"
        page.get_by_role("button", name="Submit to the committee").click()
        page.locator(".nhsuk-error-summary").wait_for()
        page.locator('.nhsuk-error-summary a[href="#lay_summary"]').click()

        assert page.evaluate("document.activeElement.id") == "lay_summary"
        assert blocking_violations(page) == [], "the form with its error summary"
    finally:
        context.close()


def test_close_confirmation_page_has_no_serious_violation(browser: Any, a11y_service: LiveService) -> None:
    """The destructive action's confirmation step (reached by posting the reason from the project page)."""
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        sign_in(page, a11y_service, "chris.chair@demo.tre.example")
        page.goto(f"{a11y_service.url}/projects/{_project_id(a11y_service, 'Heart failure readmissions')}")
        page.fill("#close-reason", "Accessibility check of the confirmation step")
        page.get_by_role("button", name=re.compile("Close the project")).click()
        page.wait_for_selector("#close-destroyed")

        assert page.locator("h1").inner_text().startswith("Are you sure")
        assert blocking_violations(page) == []
    finally:
        context.close()


def _project_id(service: LiveService, title: str) -> str:
    from sqlalchemy import create_engine, select
    from sqlalchemy.orm import Session

    from projects.models import Project

    engine = create_engine(f"sqlite:///{service.instance / 'tre.sqlite'}")
    try:
        with Session(engine) as s:
            project_id = s.scalar(select(Project.id).where(Project.title == title))
    finally:
        engine.dispose()
    assert project_id is not None
    return project_id


def _tab_until(page: Any, test: str, limit: int = 250) -> bool:
    """Press Tab until ``test`` (a JavaScript expression over ``document.activeElement``) holds."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"(() => {{ const el = document.activeElement; return !!({test}); }})()"):
            return True
    return False


def test_chart_numbers_open_with_the_keyboard_alone(browser: Any, a11y_service: LiveService) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, a11y_service, "dana.dac@demo.tre.example")
        page.goto(a11y_service.url + "/dac/turnaround")

        assert _tab_until(page, "el.closest('#applications-median') && el.tagName === 'SUMMARY'")
        page.keyboard.press("Enter")

        assert page.evaluate("document.querySelector('#applications-median details').open")
        assert page.locator("#applications-median-table").is_visible()
    finally:
        context.close()


def test_checkers_table_view_is_reached_and_scrolled_with_the_keyboard_alone(
    browser: Any, a11y_service: LiveService, claimed_table: str
) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        sign_in(page, a11y_service, OLIVE)
        page.goto(claimed_table)

        assert _tab_until(page, "el.classList.contains('open-table-review')")
        page.keyboard.press("Enter")
        page.wait_for_selector("#table-before")
        assert _tab_until(page, "el.classList.contains('tre-table-scroll') && el.querySelector('#table-before')")
        assert _tab_until(page, "el.classList.contains('tre-table-scroll') && el.querySelector('#table-after')")
        flagged = page.locator('#table-before td[data-rules="threshold"]')
        assert flagged.count() == 1 and "Threshold" in flagged.inner_text()  # read out, not only coloured
    finally:
        context.close()


def test_walk_follows_links_and_skips_downloads() -> None:
    """The walk's filter: sign-out, raw files, bundles, the API and static files are not followed."""
    for link in ("/auth/logout", "/outputs/files/abc?raw=1", "/outputs/requests/abc/bundle", "/api/v1/me",
                 "/static/tre.css", "/audit/export"):
        assert SKIP.search(link), link
    for link in ("/outputs/files/abc", "/dac/turnaround", "/projects/abc/agreement"):
        assert not SKIP.search(link), link
