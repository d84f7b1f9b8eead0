"""Output checking pages: the researcher's request, the checker's queue and review, file views that
never render researcher content as HTML, downloads and metrics."""

from __future__ import annotations

import html
import io
import re
import zipfile
from typing import Any

import pytest
from sqlalchemy import select

from disclosure.models import OutputRequest
from tests.disclosure.engine.test_model_text import R_LM, admissions, many_summaries, summary_text
from tests.disclosure.factories import SAFE_CSV, World, person, run_queued_jobs
from tests.statements import count_statements
from tests.tre.helpers import csrf_token, sign_in
from tre.core.audit import AuditEvent
from tre.core.identity import User


class Browser:
    """A signed-in test client per person."""

    def __init__(self, app: Any, world: World) -> None:
        self.app = app
        self.world = world
        self.secrets: dict[str, str] = {}
        self.clients: dict[str, Any] = {}

    def as_(self, user: User) -> Any:
        """One signed-in client per person (a TOTP code is accepted only once)."""
        if user.id not in self.clients:
            client = self.app.test_client()
            sign_in(client, user.email, self.secrets[user.id])
            self.clients[user.id] = client
        return self.clients[user.id]


@pytest.fixture
def web(sqlite_app: Any) -> Any:
    """A world whose author, colleague, outsider and two checkers can sign in."""
    return _browser(sqlite_app)


@pytest.fixture
def web_on_each_database(app: Any) -> Any:
    """``web`` on SQLite and on PostgreSQL."""
    return _browser(app)


def _browser(sqlite_app: Any) -> Browser:
    from tests.tre.helpers import create_user

    with sqlite_app.app_context():
        world = World.__new__(World)
        from tests.disclosure.factories import active_project, no_broker, outputs

        no_broker()
        world.app = sqlite_app
        browser = Browser(sqlite_app, world)
        for attr, key, roles in (
            ("author", "rita", ["researcher"]),
            ("colleague", "sam", ["researcher"]),
            ("outsider", "rob", ["researcher"]),
            ("olive", "olive", ["output_checker"]),
            ("oscar", "oscar", ["output_checker"]),
        ):
            user, secret = create_user(sqlite_app, f"{key}@nhs.example", roles)
            setattr(world, attr, user)
            browser.secrets[user.id] = secret
        world.otto = person(sqlite_app, "otto", ["output_checker"])
        world.project = active_project(sqlite_app, world.author, [world.colleague])
        world.svc = outputs(sqlite_app)
    # No app context stays open during the test: each request gets its own, as in production.
    return browser


def _post(client: Any, page: str, url: str, data: dict[str, Any], **kwargs: Any) -> Any:
    return client.post(url, data={**data, "csrf_token": csrf_token(client, page)}, **kwargs)


def test_researcher_describes_and_submits_a_workspace_request_through_the_pages(web: Browser) -> None:
    w = web.world
    req, _ = w.svc.create_request(w.author, w.project.id, "Admissions")  # as the workspace's client does
    w.svc.add_file(w.author, req.id, "table.csv", SAFE_CSV, group="tables")
    rita = web.as_(w.author)
    page = f"/outputs/requests/{req.id}"

    refused = _post(rita, page, f"{page}/submit", {}, follow_redirects=True)
    _post(
        rita,
        page,
        f"{page}/groups",
        {"name": "tables", "context": "Adults admitted in 2020", "controls": "Counts rounded to 5"},
    )
    _post(rita, page, f"{page}/submit", {})

    assert "Describe the context of group tables" in refused.get_data(as_text=True)
    assert w.session.get(OutputRequest, req.id).state == "submitted"
    run_queued_jobs(web.app)
    w.session.expire_all()
    assert w.session.get(OutputRequest, req.id).state == "awaiting_review"


def test_pages_take_no_output_files_from_outside_the_workspace(web: Browser) -> None:
    w = web.world
    req = w.draft()
    rita = web.as_(w.author)
    page = f"/outputs/requests/{req.id}"

    upload = _post(
        rita, page, f"{page}/files", {"file": (io.BytesIO(SAFE_CSV), "x.csv")}, content_type="multipart/form-data"
    )
    create = _post(rita, "/outputs/", "/outputs/new", {"project_id": w.project.id, "title": "From home"})
    body = rita.get(page).get_data(as_text=True)

    assert upload.status_code in (404, 405) and create.status_code in (404, 405)
    assert 'type="file"' not in body and "tre-submit --resubmit" in body
    assert [f.name for f in w.refresh(req).current_files] == ["table.csv"]


def test_csv_is_shown_to_checkers_cell_by_cell_with_every_cell_escaped(web: Browser) -> None:
    w = web.world
    hostile = b'region,count\n"<script>alert(1)</script>",12\n<img src=x onerror=alert(2)>,15\n'
    req = w.submitted(content=hostile)
    w.svc.claim(w.olive, req.id)  # a checker sees content once the review is theirs
    olive = web.as_(w.olive)

    body = olive.get(f"/outputs/files/{req.current_files[0].id}").get_data(as_text=True)

    assert "<script>alert(1)" not in body and "<img src=x" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=alert(2)&gt;" in body


def test_raw_files_are_inert_plain_text_or_png_with_nosniff(web: Browser) -> None:
    w = web.world
    req = w.draft(content=b"<script>alert(1)</script>", name="notes.txt")
    from disclosure.rules import PNG_MAGIC

    w.svc.add_file(w.author, req.id, "figure.png", PNG_MAGIC + b"rest", group="tables")
    w.svc.submit(w.author, req.id)
    run_queued_jobs(web.app)
    files = {f.name: f for f in w.refresh(req).current_files}
    w.svc.claim(w.olive, req.id)
    olive = web.as_(w.olive)

    text = olive.get(f"/outputs/files/{files['notes.txt'].id}")
    image = olive.get(f"/outputs/files/{files['figure.png'].id}")

    assert text.mimetype == "text/plain" and image.mimetype == "image/png"
    for response in (text, image):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in response.headers["Content-Security-Policy"]


def test_request_page_escapes_researcher_text(web: Browser) -> None:
    w = web.world
    req = w.submitted(context="<b onmouseover=alert(1)>hover</b>", content=SAFE_CSV)
    body = web.as_(w.olive).get(f"/outputs/requests/{req.id}").get_data(as_text=True)

    assert "<b onmouseover" not in body
    assert "&lt;b onmouseover=alert(1)&gt;" in body


def test_file_views_are_refused_to_strangers_and_audited_for_checkers(web: Browser) -> None:
    w = web.world
    req = w.submitted(content=SAFE_CSV)
    file_id = req.current_files[0].id
    w.svc.claim(w.olive, req.id)

    assert web.as_(w.outsider).get(f"/outputs/files/{file_id}").status_code == 403
    assert web.as_(w.author).get(f"/outputs/files/{file_id}").status_code == 403  # not released yet
    assert web.as_(w.olive).get(f"/outputs/files/{file_id}").status_code == 200

    views = w.session.scalars(select(AuditEvent).where(AuditEvent.action == "output.view_file")).all()
    assert sorted(e.outcome for e in views) == ["denied", "denied", "success"]


def test_queue_shows_waiting_requests_with_automated_status_and_is_for_checkers_only(web: Browser) -> None:
    w = web.world
    req = w.submitted(content=SAFE_CSV)
    w.svc.claim(w.oscar, req.id)

    queue = web.as_(w.olive).get("/outputs/queue").get_data(as_text=True)

    assert req.title in queue and "Done" in queue and "hours" in queue
    assert "Oscar: 1 open review" in queue
    assert web.as_(w.author).get("/outputs/queue").status_code == 403


def test_queue_pages_take_as_many_statements_for_many_requests_as_for_one(web_on_each_database: Browser) -> None:
    web = web_on_each_database
    w = web.world
    olive = web.as_(w.olive)
    api = {"Authorization": f"Bearer {_api_token(w, w.olive)}"}
    first = w.submitted(content=SAFE_CSV)
    w.svc.claim(w.oscar, first.id)
    olive.get("/outputs/queue")
    olive.get("/api/v1/outputs/queue", headers=api)

    page_with_one, _ = count_statements(w.app, lambda: olive.get("/outputs/queue"))
    api_with_one, _ = count_statements(w.app, lambda: olive.get("/api/v1/outputs/queue", headers=api))
    others = [w.submitted(content=SAFE_CSV) for _ in range(4)]
    w.svc.claim(w.otto, others[0].id)
    w.svc.claim(w.oscar, others[1].id)
    page_with_five, page = count_statements(w.app, lambda: olive.get("/outputs/queue"))
    api_with_five, listed = count_statements(w.app, lambda: olive.get("/api/v1/outputs/queue", headers=api))

    assert (page_with_five, api_with_five) == (page_with_one, api_with_one)
    html = page.get_data(as_text=True)
    assert all(f"/outputs/requests/{r.id}" in html for r in [first, *others])
    assert html.count("Oscar") == 3 and "Otto" in html
    assert [e["id"] for e in listed.json] == [r.id for r in [first, *others]]
    assert [e["reviewers"] for e in listed.json] == [[w.oscar.id], [w.otto.id], [w.oscar.id], [], []]
    assert {e["automated_checks"] for e in listed.json} == {"done"}


def _request_ids(html_text: str) -> list[str]:
    return re.findall(r'href="/outputs/requests/([^"/]+)"', html_text)


def _submitted_in(w: World, project: Any, author: Any, title: str) -> Any:
    req, _ = w.svc.create_request(author, project.id, title)
    w.svc.set_group(author, req.id, "tables", "Admissions by region", "None yet")
    w.svc.add_file(author, req.id, "table.csv", SAFE_CSV, group="tables")
    w.svc.submit(author, req.id)
    run_queued_jobs(w.app)
    return req


def test_queue_page_shows_a_page_of_what_its_reader_may_check_oldest_first(
    web: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.disclosure.factories import active_project

    monkeypatch.setattr("tre.web.outputs.PAGE_SIZE", 2)
    w = web.world
    ours = [w.submitted(content=SAFE_CSV) for _ in range(3)]
    with w.app.app_context():  # olive is on this project's team: she may never check its requests
        theirs = active_project(w.app, w.outsider, [w.olive], title="Another study")
        hidden = [_submitted_in(w, theirs, w.outsider, f"Hidden {n}") for n in range(2)]
    olive, oscar = web.as_(w.olive), web.as_(w.oscar)

    first, second = olive.get("/outputs/queue"), olive.get("/outputs/queue?page=2")
    beyond = olive.get("/outputs/queue?page=3").get_data(as_text=True)
    oscars = [oscar.get(f"/outputs/queue?page={n}").get_data(as_text=True) for n in (1, 2, 3)]

    assert (first.status_code, second.status_code) == (200, 200)
    assert _request_ids(first.get_data(as_text=True)) == [r.id for r in ours[:2]]
    assert _request_ids(second.get_data(as_text=True)) == [ours[2].id]
    assert "Showing 1 to 2 of 3 requests you may check (page 1 of 2)" in first.get_data(as_text=True)
    assert 'href="/outputs/queue?page=2" rel="next"' in first.get_data(as_text=True)
    assert 'href="/outputs/queue?page=1" rel="prev"' in second.get_data(as_text=True)
    assert "There is no page 3: the list has 2 pages." in beyond and _request_ids(beyond) == []
    assert not {r.id for r in hidden} & set(_request_ids(first.get_data(as_text=True) + second.get_data(as_text=True)))
    assert "of 5 requests you may check" in oscars[0]
    assert [i for page in oscars for i in _request_ids(page)] == [r.id for r in [*ours, *hidden]]


def test_researchers_requests_page_shows_a_page_of_them_newest_first(
    web: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tre.web.outputs.PAGE_SIZE", 2)
    w = web.world
    made = [w.draft() for _ in range(3)]
    sam = web.as_(w.colleague)

    pages = [sam.get(f"/outputs/?page={n}").get_data(as_text=True) for n in (1, 2)]
    beyond = sam.get("/outputs/?page=5").get_data(as_text=True)
    stranger = web.as_(w.outsider).get("/outputs/").get_data(as_text=True)

    assert [_request_ids(p) for p in pages] == [[made[2].id, made[1].id], [made[0].id]]
    assert "Showing 1 to 2 of 3 requests (page 1 of 2)" in pages[0] and "Showing 3 to 3 of 3" in pages[1]
    assert "There is no page 5: the list has 2 pages." in beyond
    assert 'href="/outputs/?page=2" rel="prev"' in beyond
    assert _request_ids(stranger) == [] and "No requests yet." in stranger


@pytest.mark.parametrize("path", ["/outputs/", "/outputs/queue"])
@pytest.mark.parametrize("page", ["0", "-2", "two", "1.5"])
def test_a_page_that_is_not_a_whole_number_is_refused_with_a_reason(web: Browser, path: str, page: str) -> None:
    w = web.world
    reader = web.as_(w.olive if path.endswith("queue") else w.author)

    response = reader.get(f"{path}?page={page}")

    assert response.status_code == 400
    assert "The page must be a whole number from 1" in response.get_data(as_text=True)


def _api_token(w: World, user: Any) -> str:
    import datetime as dt

    from tests.disclosure.factories import platform

    with w.app.app_context():
        return platform(w.app).tokens.issue(user.id, "tre-api", "api", dt.timedelta(minutes=10), project_id=None)


def test_author_cannot_claim_their_own_request_from_the_page(web: Browser) -> None:
    w = web.world
    req = w.submitted(content=SAFE_CSV)
    rita = web.as_(w.author)

    response = rita.post(
        f"/outputs/requests/{req.id}/claim", data={"csrf_token": csrf_token(rita, f"/outputs/requests/{req.id}")}
    )

    assert response.status_code == 403
    assert "Claim a review" not in rita.get(f"/outputs/requests/{req.id}").get_data(as_text=True)


def test_checker_reviews_and_decides_through_the_pages(web: Browser) -> None:
    w = web.world
    req = w.submitted(content=SAFE_CSV)
    page = f"/outputs/requests/{req.id}"
    file_id = req.current_files[0].id
    for checker in (w.olive, w.oscar):
        client = web.as_(checker)
        _post(client, page, f"{page}/claim", {})
        blind = client.get(page).get_data(as_text=True)
        _post(client, page, f"{page}/votes", {"file_id": file_id, "vote": "approve", "comment": ""})
        _post(client, page, f"{page}/review", {})
    olive = web.as_(w.olive)
    unblinded = olive.get(page).get_data(as_text=True)
    _post(olive, page, f"{page}/decision", {"outcome": "approve", "comment": ""})
    _post(olive, page, f"{page}/release", {})

    assert "stay hidden until every required review is in" in blind
    assert "Oscar: Approve" in unblinded
    assert w.refresh(req).state == "released"


def test_team_downloads_the_bundle_and_others_cannot(web: Browser) -> None:
    w = web.world
    req = w.released(content=SAFE_CSV)

    sam = web.as_(w.colleague).get(f"/outputs/requests/{req.id}/bundle")
    rob = web.as_(w.outsider).get(f"/outputs/requests/{req.id}/bundle")

    assert sam.status_code == 200 and sam.mimetype == "application/zip"
    assert "files/tables/table.csv" in zipfile.ZipFile(io.BytesIO(sam.data)).namelist()
    assert rob.status_code == 403


def test_metrics_page_and_prometheus_text_show_the_queue(web: Browser) -> None:
    w = web.world
    w.submitted(content=SAFE_CSV)
    w.draft()

    page = web.as_(w.olive).get("/outputs/metrics").get_data(as_text=True)
    prom = web.app.test_client().get("/metrics/outputs")

    assert 'id="queue-length">1<' in page
    assert 'id="outputs-median"' in page and 'id="outputs-recent-table"' in page  # turnaround, with its numbers
    assert prom.status_code == 200
    text = prom.get_data(as_text=True)
    assert "tre_output_queue_length 1" in text
    assert 'tre_output_requests{state="draft"} 1' in text
    assert "tre_output_check_latency_seconds_count 1" in text


def test_prometheus_text_is_refused_from_another_machine(web: Browser) -> None:
    response = web.app.test_client().get("/metrics/outputs", environ_base={"REMOTE_ADDR": "10.0.0.9"})

    assert response.status_code == 403


def test_checker_sees_flagged_cells_highlighted_by_rule_with_each_reason_in_words(web: Browser) -> None:
    w = web.world
    req = w.submitted()  # SMALL_CELL_CSV: North/male is 3, below the threshold
    w.svc.claim(w.olive, req.id)

    body = web.as_(w.olive).get(f"/outputs/files/{req.current_files[0].id}").get_data(as_text=True)

    before = body[body.index('id="table-before"') : body.index('id="table-after"')]
    assert before.count('data-rules="threshold"') == 1
    assert "tre-cell--fail" in before and "Threshold: fewer than" in before  # a mark and words, not colour
    assert 'data-rule="threshold"' in body  # the legend names the rule with its reason
    after = body[body.index('id="table-after"') :]
    assert 'data-action="suppressed_primary"' in after and 'data-action="suppressed_secondary"' in after
    assert "{&#39;" not in body and "{'" not in body  # no raw Python dictionaries


def _grid_cells(section: str) -> dict[str, str]:
    """Each cell of a rendered grid by its row label and its text: its ``<td ...>`` opening tag."""
    import re

    out = {}
    for row in re.findall(r"<tr class=\"nhsuk-table__row\">(.*?)</tr>", section, flags=re.S):
        label = re.search(r'<th scope="row" class="nhsuk-table__header">(.*?)</th>', row)
        if label is None:
            continue
        for tag, text in re.findall(r"(<td [^>]*>)\s*(?:<span[^>]*>[^<]*</span>)?([^<\s]*)", row):
            out[f"{label.group(1)}:{text}"] = tag
    return out


def test_checker_sees_a_table_1_s_statistics_unflagged_and_a_small_rows_flagged(web: Browser) -> None:
    # The lead's Table 1 from plain pandas with a row of 4 people: the medians and SDs of the big rows are
    # no counts (no "T"), the small row's n and statistics are flagged, and the preview suppresses the
    # small row's statistics alone and protects its n with another count, never with a median.
    w = web.world
    content = b"sex,n,los_median,los_sd\nF,3396,3.0,7.840118\nM,3044,3.5,8.465525\nU,4,2.0,1.5\n"
    req = w.submitted(content=content, name="table1.csv")
    w.svc.claim(w.olive, req.id)

    body = web.as_(w.olive).get(f"/outputs/files/{req.current_files[0].id}").get_data(as_text=True)

    before = _grid_cells(body[body.index('id="table-before"') : body.index('id="table-after"')])
    assert "data-rules" not in before["F:3"] and "data-rules" not in before["M:3.5"]
    assert "data-rules" not in before["F:7.84012"] and "data-rules" not in before["M:8.46552"]
    assert 'data-rules="threshold"' in before["U:4"] and 'data-rules="threshold"' in before["U:2"]
    assert 'data-rules="threshold degrees_of_freedom"' in before["U:1.5"]
    after = body[body.index('id="table-after"') :]
    assert after.count('data-action="suppressed_primary"') == 3
    cells_after = _grid_cells(after)
    assert "data-action" not in cells_after["F:3"] and "data-action" not in cells_after["M:3.5"]
    assert 'id="verdict" data-status="fail"' in body


def test_table_view_links_a_differencing_finding_to_the_earlier_request(web: Browser) -> None:
    from tests.disclosure.test_checks import CENSUS, census_csv, women_65_table

    w = web.world
    first = w.submitted(content=census_csv(), spec=CENSUS, name="census.csv")
    content, spec = women_65_table()
    later = w.submitted(content=content, spec=spec, name="women-65.csv")
    w.svc.claim(w.olive, later.id)

    body = web.as_(w.olive).get(f"/outputs/files/{later.current_files[0].id}").get_data(as_text=True)

    assert 'class="differencing-finding"' in body
    assert f'href="/outputs/requests/{first.id}"' in body and "(not yet released)" in body


def test_table_view_is_refused_to_everyone_but_a_checker_holding_a_place(web: Browser) -> None:
    # The curious researcher (author before release), a colleague, an outsider and an eligible checker who
    # has not claimed the request all try the checker's view; none sees a cell, a flag or the legend.
    w = web.world
    req = w.submitted()
    file_id = req.current_files[0].id

    for who in (w.author, w.colleague, w.outsider, w.olive):
        response = web.as_(who).get(f"/outputs/files/{file_id}")
        body = response.get_data(as_text=True)
        assert response.status_code == 403
        assert "table-before" not in body and "data-rules" not in body and "North" not in body
    denied = w.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "output.view_file", AuditEvent.outcome == "denied")
    ).all()
    assert len(denied) == 4


def test_request_page_names_flagged_cells_by_their_labels_not_as_dictionaries(web: Browser) -> None:
    w = web.world
    req = w.submitted()

    body = web.as_(w.author).get(f"/outputs/requests/{req.id}").get_data(as_text=True)

    assert "region = North, column_0 = male: fail (fewer than" in body
    assert "{&#39;" not in body and "&#39;row&#39;" not in body


def test_researchers_reach_their_output_requests_from_the_menu(web: Browser) -> None:
    w = web.world
    home = web.as_(w.author).get("/").get_data(as_text=True)
    checker_home = web.as_(w.olive).get("/").get_data(as_text=True)

    assert 'class="nhsuk-header__navigation-link" href="/outputs/">My outputs<' in home
    assert 'href="/outputs/">My outputs<' not in checker_home


def test_checker_sees_the_privacy_budget_on_the_review_page_and_the_team_on_the_project_page(web: Browser) -> None:
    from disclosure.progress import current_policy
    from tests.disclosure.test_budget import dp_output

    w = web.world
    with web.app.app_context():
        content, spec = dp_output(0.5)
        req = w.released(content=content, spec=spec)
        left = f'id="privacy-budget" data-remaining="{current_policy().get("dp", "project_budget") - 0.5:.6g}"'

    review = web.as_(w.olive).get(f"/outputs/requests/{req.id}").get_data(as_text=True)
    project = web.as_(w.colleague).get(f"/projects/{w.project.id}").get_data(as_text=True)
    stranger = web.as_(w.outsider).get(f"/projects/{w.project.id}")

    assert left in review
    assert "spends epsilon 0.5 when released (charged)" in review
    assert left in project
    assert stranger.status_code != 200 or "privacy-budget" not in stranger.get_data(as_text=True)


def test_chair_sets_the_privacy_budget_from_the_project_page_and_a_researcher_cannot(web: Browser) -> None:
    from disclosure.budget import budget_state
    from tests.tre.helpers import create_user

    w = web.world
    chair, secret = create_user(web.app, "dora@nhs.example", ["dac_chair"])
    web.secrets[chair.id] = secret
    page = f"/projects/{w.project.id}"
    url = f"/dac/{w.project.id}/privacy-budget"

    refused = _post(web.as_(w.author), page, url, {"total_epsilon": "99", "reason": "more"})
    bad = _post(web.as_(chair), page, url, {"total_epsilon": "lots", "reason": "x"}, follow_redirects=True)
    done = _post(web.as_(chair), page, url, {"total_epsilon": "2.5", "reason": "agreed at committee"})

    assert refused.status_code == 403
    assert "The total epsilon must be a number" in bad.get_data(as_text=True)
    assert done.status_code == 302
    with web.app.app_context():
        state = budget_state(web.app.extensions["tre.platform"].db.session, w.project.id)
        denied = (
            web.app.extensions["tre.platform"]
            .db.session.execute(
                select(AuditEvent.action, AuditEvent.actor_id, AuditEvent.target_id).where(
                    AuditEvent.outcome == "denied"
                )
            )
            .all()
        )
    assert (state.total, state.set_by) == (2.5, chair.id)
    assert ("access.denied", w.author.id, "dac.privacy_budget") in denied
    assert ("privacy_budget.set", chair.id, w.project.id) in denied  # the bad number


def test_checker_sees_a_printed_model_summary_judged_by_the_regression_rules(web: Browser) -> None:
    w = web.world
    req = w.submitted(content=R_LM.encode(), name="model.txt")

    body = html.unescape(web.as_(w.olive).get(f"/outputs/requests/{req.id}").get_data(as_text=True))

    assert 'data-status="review"' in body
    assert "no_residuals: the residuals' minimum and maximum are printed: one person's values each" in body
    assert "categorical_levels: the rows in each level of a categorical regressor cannot be seen" in body
    assert "no automated check exists for this kind of file" not in body


def test_checker_sees_a_file_of_many_model_summaries_as_a_few_reasons_with_their_counts(web: Browser) -> None:
    w = web.world
    text = many_summaries(120, last=summary_text("ols", admissions(8, seed=11)))
    req = w.submitted(content=text.encode(), name="models.txt")

    body = html.unescape(web.as_(w.olive).get(f"/outputs/requests/{req.id}").get_data(as_text=True))

    assert 'data-status="fail"' in body
    reasons = re.search(r'<ul class="nhsuk-list nhsuk-list--bullet verdict-reasons">(.*?)</ul>', body, re.S)
    assert reasons is not None
    assert reasons.group(1).count("<li>") == 3  # one per rule, not one per summary
    assert "of the file's 121 model summaries (every one checked), 1 fail on this rule" in body
    assert "30 go to review on this rule" in body  # every R lm summary prints its residuals' Min and Max
