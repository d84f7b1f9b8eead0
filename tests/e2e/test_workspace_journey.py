"""Through the real control plane, worker and JupyterHub: a researcher opens the project's workspace from
the project page and lands in JupyterLab with the extract; code running in that workspace (its own unix
account, network namespace and output token) loads the extract with pandas, builds a table with the
disclosure session and submits it with the in-workspace client, then again through JupyterLab's
Outputs menu and its dialog; an output checker sees the requests in the queue; the browser cannot take
the extract away by any download path; a researcher of no project is refused; when the project is
suspended, the running server is stopped."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from projects.workspaces import server_name
from tests.e2e.conftest import LiveService, sign_in

RUNTIME = Path(os.environ.get("TRE_WORKSPACE_RUNTIME", "/opt/tre-workspace"))
RITA = "rita.researcher@demo.tre.example"
OLIVE = "olive.checker@demo.tre.example"
TITLE = "Patients by deprivation decile and sex"
CLI_TITLE = "Patients by deprivation decile and sex (tre-submit)"
MENU_TITLE = "Patients by deprivation decile and sex (JupyterLab menu)"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="NOT ROOT: workspaces need their own unix accounts; skipped"),
    pytest.mark.skipif(
        not (RUNTIME / "bin" / "jupyter-labhub").exists(),
        reason="WORKSPACE RUNTIME NOT BUILT (make workspace-runtime); skipped",
    ),
]

# What the researcher runs in a notebook. It prints one JSON line the test reads back.
ANALYSIS = f"""
import glob, json, os, pwd, subprocess
import pandas as pd
from disclosure.session import Session
from jupyter.client import submit

extract = os.environ["TRE_EXTRACT_DIR"]
parquets = sorted(glob.glob(os.path.join(extract, "**", "*.parquet"), recursive=True))
patients_file = next(p for p in parquets if {{"sex", "deprivation_decile"}} <= set(pd.read_parquet(p).columns))
patients = pd.read_parquet(patients_file)

session = Session(suppress=True)
table = session.crosstab(patients["deprivation_decile"], patients["sex"])
folder = os.path.join(os.environ["TRE_OUTPUTS_DIR"], "table1")
session.finalise(folder)
tables = sorted(glob.glob(os.path.join(folder, "*.csv")))

answer = submit(
    tables,
    context="Number of patients in the extract by deprivation decile (1 most deprived) and sex",
    controls="Disclosure session with suppression: cells under the threshold are suppressed",
    title={TITLE!r},
)
cli = subprocess.run(
    ["tre-submit", *tables, "--title", {CLI_TITLE!r},
     "--context", "The same table, sent from the command line", "--controls", "Suppression as above"],
    capture_output=True, text=True,
)
print(json.dumps({{
    "account": pwd.getpwuid(os.getuid()).pw_name,
    "netns": os.readlink("/proc/self/ns/net"),
    "rows": len(patients),
    "table_cells": int(table.size),
    "extract_file": os.path.relpath(patients_file, extract),
    "answer": answer,
    "tables": [os.path.relpath(t, os.environ["TRE_OUTPUTS_DIR"]) for t in tables],
    "cli": [cli.returncode, cli.stdout.strip(), cli.stderr.strip()],
}}))
"""

# Run code in a new kernel of the workspace through the Jupyter server's REST and websocket API, from
# inside the JupyterLab page: the browser's own hub cookies and XSRF token, as JupyterLab itself does.
RUN_IN_KERNEL = """
async ({base, code, timeoutMs, kernelName}) => {
  const xsrf = decodeURIComponent((document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [, ""])[1]);
  const headers = {"X-XSRFToken": xsrf, "Content-Type": "application/json"};
  const body = JSON.stringify({name: kernelName || "python3"});
  let started;
  try {
    started = await fetch(base + "api/kernels", {method: "POST", headers, body});
  } catch (failure) {
    // Nothing ran: the request never reached the server (say where the page was, for the log).
    return {error: "starting a kernel: " + failure + " at " + location.href + " (" + document.readyState + ")",
            stdout: "", stderr: "", retryable: true};
  }
  if (!started.ok) { return {error: "starting a kernel: HTTP " + started.status, stdout: "", stderr: ""}; }
  const kernel = await started.json();
  const channels = "api/kernels/" + kernel.id + "/channels?session_id=tre-e2e";
  const socket = new WebSocket(base.replace(/^http/, "ws") + channels);
  const msgId = "tre-e2e-" + Date.now();
  const result = await new Promise((resolve) => {
    const out = {stdout: "", stderr: "", error: null};
    const timer = setTimeout(() => resolve({...out, error: "timed out"}), timeoutMs);
    socket.onerror = () => { clearTimeout(timer); resolve({...out, error: "websocket error"}); };
    socket.onopen = () => socket.send(JSON.stringify({
      header: {msg_id: msgId, session: "tre-e2e", username: "", msg_type: "execute_request", version: "5.3",
               date: new Date().toISOString()},
      parent_header: {}, metadata: {}, channel: "shell", buffers: [],
      content: {code, silent: false, store_history: false, user_expressions: {}, allow_stdin: false,
                stop_on_error: true},
    }));
    socket.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (!msg.parent_header || msg.parent_header.msg_id !== msgId) { return; }
      if (msg.msg_type === "stream") { out[msg.content.name] += msg.content.text; }
      if (msg.msg_type === "error") { out.error = msg.content.ename + ": " + msg.content.evalue; }
      if (msg.msg_type === "status" && msg.content.execution_state === "idle") { clearTimeout(timer); resolve(out); }
    };
  });
  socket.close();
  await fetch(base + "api/kernels/" + kernel.id, {method: "DELETE", headers}).catch(() => null);
  return result;
}
"""


def _hub_servers(service: LiveService, username: str) -> dict[str, Any]:
    token = (service.instance / "hub-api-token").read_text().strip()
    request = urllib.request.Request(
        f"{service.hub_url}/hub/api/users/{username}", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return dict(json.load(response).get("servers", {}))


def open_lab(page: Any) -> str:
    """After "Open workspace": wait until JupyterLab itself runs in the page, then its server's base URL.

    The URL alone is not enough: the hub's pages on the way (spawn-pending, the OAuth hand-off) come
    first, and a kernel request sent while the page is still on its way is cancelled by the browser
    ("Failed to fetch"). The file browser listing the home folder's ``extract`` means the lab is up.
    """
    page.wait_for_url("**/user/*/*/lab**", timeout=180_000)
    page.locator(".jp-DirListing-content").get_by_text("extract", exact=True).wait_for(timeout=90_000)
    return str(page.url).split("/lab", 1)[0] + "/"


def run_in_workspace(page: Any, base: str, code: str, timeout: float = 240, kernel: str = "python3") -> dict[str, Any]:
    """Run ``code`` in a new kernel of the workspace; its output. A kernel start that never reached
    the server (so nothing ran) is tried again, twice at most, once the lab is showing again."""
    for attempt in range(3):
        result = page.evaluate(
            RUN_IN_KERNEL, {"base": base, "code": code, "timeoutMs": int(timeout * 1000), "kernelName": kernel}
        )
        if not result.get("retryable") or attempt == 2:
            break
        print(f"\nKERNEL START NOT SENT (attempt {attempt + 1}): {result['error']}")
        page.locator(".jp-DirListing-content").get_by_text("extract", exact=True).wait_for(timeout=90_000)
    assert result["error"] is None, f"{result['error']}\n{result['stderr'][-3000:]}"
    return dict(result)


def _xsrf(page: Any) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")


def test_workspace_journey_from_project_page_to_the_output_queue_and_stop_on_suspension(
    page: Any, live_service: LiveService
) -> None:
    sign_in(page, live_service, RITA)
    page.goto(live_service.url + "/projects/")
    page.get_by_role("link", name="Heart failure readmissions").first.click()
    project_id = page.url.rstrip("/").rsplit("/", 1)[-1]

    started = time.monotonic()
    page.click("#open-workspace")
    base = open_lab(page)
    print(f"\nSPAWN TIME through the real control plane: {time.monotonic() - started:.1f} s")

    # Analyse and submit, in the workspace itself.
    started = time.monotonic()
    ran = run_in_workspace(page, base, ANALYSIS)
    print(f"ANALYSIS AND SUBMISSION in the workspace kernel: {time.monotonic() - started:.1f} s")
    facts = json.loads(ran["stdout"].strip().splitlines()[-1])
    assert facts["account"] != "root"  # the workspace's own unix account, not the hub's
    assert facts["netns"] != os.readlink("/proc/self/ns/net")  # and its own network namespace
    assert facts["rows"] > 0 and facts["table_cells"] > 0
    assert facts["answer"]["project_id"] == project_id
    assert facts["answer"]["title"] == TITLE
    assert facts["cli"][0] == 0, facts["cli"]
    assert "Submitted output request" in facts["cli"][1]

    # The researcher sends the same table through JupyterLab: select it, Outputs → Submit for output checking…
    started = time.monotonic()
    menu_answer = _submit_through_the_menu(page, f"outputs/{facts['tables'][0]}")
    print(f"SUBMISSION THROUGH THE JUPYTERLAB MENU (select, fill, answer): {time.monotonic() - started:.1f} s")
    assert menu_answer["state"] == "submitted"

    # An output checker sees the three requests in the queue.
    olive = page.context.browser.new_context().new_page()
    sign_in(olive, live_service, OLIVE)
    deadline = time.monotonic() + 120
    while True:
        olive.goto(live_service.url + "/outputs/queue")
        queue = olive.inner_text("#queue")
        if all(t in queue for t in (TITLE, CLI_TITLE, MENU_TITLE)) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert TITLE in queue and CLI_TITLE in queue and MENU_TITLE in queue
    olive.get_by_role("link", name=TITLE, exact=True).click()
    assert facts["answer"]["id"] in olive.url
    olive.goto(live_service.url + "/outputs/queue")
    olive.get_by_role("link", name=MENU_TITLE, exact=True).click()
    assert menu_answer["id"] in olive.url
    assert "Suppression applied by the disclosure session" in olive.inner_text("main")

    # Two checkers return the menu's request for changes; the researcher replaces its table with a new
    # file through JupyterLab's Outputs → Resubmit a returned request…, and it is checked again.
    _return_for_changes(page.context.browser, live_service, menu_answer["id"])
    started = time.monotonic()
    new_name = _write_changed_table(page, base, facts["tables"][0])
    resubmitted = _resubmit_through_the_menu(page, menu_answer["id"], new_name, replace=facts["tables"][0])
    print(f"RESUBMISSION THROUGH THE JUPYTERLAB MENU: {time.monotonic() - started:.1f} s")
    assert resubmitted == {"id": menu_answer["id"], "state": "submitted"}
    olive.goto(f"{live_service.url}/outputs/requests/{menu_answer['id']}")
    names = [olive.locator(".nhsuk-card[data-file-name]").nth(i).get_attribute("data-file-name")
             for i in range(olive.locator(".nhsuk-card[data-file-name]").count())]
    assert names == [new_name], names  # the chosen file replaced, nothing else sent

    # No download path takes the extract (or a copy of it) out of the workspace.
    _assert_downloads_refused(page, base, facts["extract_file"])

    # The committee chair suspends the project through the page; within a minute the server stops.
    username = _hub_username(live_service)
    assert server_name(project_id) in _hub_servers(live_service, username)
    chair = page.context.browser.new_context().new_page()
    sign_in(chair, live_service, "chris.chair@demo.tre.example")
    chair.goto(f"{live_service.url}/projects/{project_id}")
    chair.click("#suspend-project")  # to the confirmation page, which asks for the reason
    chair.fill("#reason", "Suspected breach under investigation")
    chair.click("#confirm-yes")

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server_name(project_id) in _hub_servers(live_service, username):
        time.sleep(3)
    assert server_name(project_id) not in _hub_servers(live_service, username)

    # The chair reinstates it: the project is active again (and the session's later tests find the
    # demo's project as the demo made it, whichever order they run in).
    chair.goto(f"{live_service.url}/projects/{project_id}")
    chair.get_by_role("button", name="Reinstate the project").click()
    chair.get_by_text("Project reinstated").wait_for()
    assert chair.locator("#suspend-project").count() == 1
    chair.context.close()


def _submit_through_the_menu(page: Any, path: str) -> dict[str, str]:
    """Open each folder of ``path`` in the file browser, select the file, and submit it from the menu."""
    listing = page.locator(".jp-DirListing-content")
    *folders, name = path.split("/")
    for folder in folders:
        listing.locator(".jp-DirListing-itemText", has_text=folder).first.dblclick()
        page.locator(".jp-BreadCrumbs").get_by_text(folder, exact=True).wait_for()
    item = listing.locator(".jp-DirListing-item", has_text=name)
    item.click()
    # The same entry is on the file's right-click menu.
    item.click(button="right")
    page.locator(".lm-Menu").get_by_text("Submit for output checking…").wait_for()
    page.keyboard.press("Escape")

    page.locator(".lm-MenuBar-item", has_text="Outputs").click()
    page.locator(".lm-Menu").get_by_text("Submit for output checking…").click()
    dialog = page.locator(".jp-Dialog")
    assert name in dialog.locator(".tre-SubmitForm-files").inner_text()
    dialog.get_by_label("Title").fill(MENU_TITLE)
    dialog.get_by_label("Context").fill("Patients by deprivation decile and sex, chosen from the JupyterLab menu")
    # Submitting without controls is stopped in the dialog, which says what is missing and keeps the rest.
    dialog.get_by_role("button", name="Submit").click()
    assert "controls" in dialog.get_by_role("alert").inner_text()
    assert dialog.get_by_label("Title").input_value() == MENU_TITLE
    dialog.get_by_label("Controls").fill("Suppression applied by the disclosure session")
    dialog.get_by_role("button", name="Submit").click()

    result = page.locator(".jp-Dialog .tre-SubmitResult")
    result.wait_for(timeout=60_000)
    words = result.inner_text().split()  # "Output request <id> is <state>. ..."
    page.locator(".jp-Dialog").get_by_role("button", name="Close").click()
    return {"id": words[2], "state": words[4].rstrip(".")}


def _return_for_changes(browser: Any, service: LiveService, request_id: str) -> None:
    """Two output checkers review the request blind; the second records the decision "return"."""
    from tests.e2e.test_output_checking import OSCAR, _vote_and_review, _wait_for_state

    url = f"{service.url}/outputs/requests/{request_id}"
    olive, oscar = browser.new_context().new_page(), browser.new_context().new_page()
    sign_in(olive, service, OLIVE)
    sign_in(oscar, service, OSCAR)
    olive.goto(url)
    _wait_for_state(olive, "awaiting_review", timeout=180)
    _vote_and_review(olive, url, "changes_requested", "Round the counts to 5")
    _vote_and_review(oscar, url, "approve")
    oscar.check("#outcome-return")
    oscar.fill("#decision-comment", "Please round the counts to 5 before release")
    oscar.click("text=Record decision")
    olive.goto(url)
    _wait_for_state(olive, "returned")
    olive.context.close()
    oscar.context.close()


def _write_changed_table(page: Any, base: str, table: str) -> str:
    """The researcher writes the changed table beside the old one (in the workspace); its name."""
    new = table.rsplit("/", 1)[-1].replace(".csv", "_rounded.csv")
    run_in_workspace(
        page,
        base,
        f"""
import os, pandas as pd
old = os.path.join(os.environ["TRE_OUTPUTS_DIR"], {table!r})
frame = pd.read_csv(old, index_col=0)
(frame.apply(pd.to_numeric, errors="coerce") // 5 * 5).to_csv(os.path.join(os.path.dirname(old), {new!r}))
""",
    )
    return new


def _resubmit_through_the_menu(page: Any, request_id: str, new_name: str, replace: str) -> dict[str, str]:
    """Select the new file in the (already open) folder, then Outputs → Resubmit a returned request…"""
    refresh = page.locator(".jp-FileBrowser [data-command='filebrowser:refresh']")
    if refresh.count():  # otherwise the file browser's own polling shows the new file
        refresh.first.click()
    item = page.locator(".jp-DirListing-content .jp-DirListing-item", has_text=new_name)
    item.wait_for(timeout=60_000)
    item.click()
    page.locator(".lm-MenuBar-item", has_text="Outputs").click()
    page.locator(".lm-Menu").get_by_text("Resubmit a returned request…").click()
    dialog = page.locator(".jp-Dialog")
    assert new_name in dialog.inner_text()
    dialog.get_by_label("Output request id").fill(request_id)
    dialog.get_by_role("button", name="Show its files").click()
    form = page.locator(".jp-Dialog .tre-ResubmitForm")
    form.wait_for(timeout=60_000)
    assert "returned" in form.inner_text()
    assert "Please round the counts to 5 before release" in form.inner_text()  # the checkers' shared comment
    old_name = replace.rsplit("/", 1)[-1]
    form.get_by_label(old_name, exact=False).check()
    page.locator(".jp-Dialog").get_by_role("button", name="Replace and resubmit").click()
    result = page.locator(".jp-Dialog .tre-ResubmitResult")
    result.wait_for(timeout=60_000)
    words = result.inner_text().split()  # "Output request <id> is <state> again, ..."
    page.locator(".jp-Dialog").get_by_role("button", name="Close").click()
    return {"id": words[2], "state": words[4]}


def _hub_username(service: LiveService) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{service.instance / 'tre.sqlite'}")
    with engine.connect() as conn:
        rita_id = conn.execute(text("SELECT id FROM users WHERE email = :e"), {"e": RITA}).scalar_one()
    engine.dispose()
    return f"u-{rita_id}"


def _assert_downloads_refused(page: Any, base: str, extract_file: str) -> None:
    # The researcher prepares every way round she can think of: a symlink to the extract in her home,
    # a byte-for-byte copy in outputs/, a "lab extension" and a "kernel" whose static files are the
    # extract, and a small table of her own that she may view.
    run_in_workspace(
        page,
        base,
        f"""
import os, shutil
home, source = os.path.expanduser("~"), os.path.join(os.environ["TRE_EXTRACT_DIR"], {extract_file!r})
os.symlink(source, os.path.join(home, "peek.parquet"))
shutil.copyfile(source, os.path.join(home, "outputs", "copy.parquet"))
for folder in (".local/share/jupyter/labextensions/leak/static", ".local/share/jupyter/kernels/leak"):
    os.makedirs(os.path.join(home, folder), exist_ok=True)
    os.symlink(source, os.path.join(home, folder, "data.parquet"))
with open(os.path.join(home, ".local/share/jupyter/kernels/leak/kernel.json"), "w") as f:
    f.write('{{"argv": ["python3"], "display_name": "leak", "language": "python"}}')
with open(os.path.join(home, "outputs", "mine.csv"), "w") as f:
    f.write("band,n\\n1,15\\n")
""",
    )
    get = page.request.get
    refused = {
        "files/extract": get(f"{base}files/extract/{extract_file}"),
        "files/extract?download": get(f"{base}files/extract/{extract_file}?download=1"),
        "files/outputs copy": get(f"{base}files/outputs/copy.parquet?download=1"),
        "contents extract": get(f"{base}api/contents/extract/{extract_file}?content=1"),
        "contents extract base64": get(f"{base}api/contents/extract/{extract_file}?type=file&format=base64"),
        "contents symlink": get(f"{base}api/contents/peek.parquet?type=file&format=base64"),
        "contents copy": get(f"{base}api/contents/outputs/copy.parquet?type=file&format=base64"),
        "nbconvert": get(f"{base}nbconvert/html/outputs/mine.csv?download=true"),
        "copy API": page.request.post(
            f"{base}api/contents/outputs",
            headers={"X-XSRFToken": _xsrf(page), "Content-Type": "application/json"},
            data=json.dumps({"copy_from": f"extract/{extract_file}"}),
        ),
    }
    assert {name: r.status for name, r in refused.items()} == {name: 403 for name in refused}
    assert "tre-submit" in refused["files/extract?download"].text()
    # Jupyter serves static files from its data path; Spawner.disable_user_config keeps the home out
    # of it, so these links are never found.
    served = {
        "lab extension": get(f"{base}lab/extensions/leak/static/data.parquet"),
        "kernelspec resource": get(f"{base}kernelspecs/leak/data.parquet"),
    }
    assert {name: r.status for name, r in served.items()} == {name: 404 for name in served}
    # Viewing her own small table is allowed: that is how the work is looked at.
    mine = get(f"{base}api/contents/outputs/mine.csv?type=file&format=text")
    assert mine.status == 200 and mine.json()["content"] == "band,n\n1,15\n"


def test_researcher_of_no_project_is_refused_a_workspace(page: Any, live_service: LiveService) -> None:
    sign_in(page, live_service, "rob.other@demo.tre.example")
    page.goto(live_service.url + "/projects/")

    assert page.locator("#open-workspace").count() == 0
