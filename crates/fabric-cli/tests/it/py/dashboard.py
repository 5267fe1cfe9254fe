"""The dashboard in a real headless Chromium (Playwright, Debian's chromium).

Usage: dashboard.py SCENARIO. The environment names the server (FABRIC_URL),
the admin password, the CLI binary and its config (signed in already), the
repository, chromium and where screenshots go (ARTIFACTS). Each step saves a
screenshot; a failure also saves the page's console log. Prints
"scenario NAME: ok" at the end.
"""

import os
import re
import subprocess
import sys
import time
import traceback

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

URL = os.environ["FABRIC_URL"]
PASSWORD = os.environ["FABRIC_ADMIN_PASSWORD"]
CLI = os.environ["FABRIC_CLI"]
REPO = os.path.realpath(os.environ["FABRIC_REPO"])
ARTIFACTS = os.environ["ARTIFACTS"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

# Live views refresh every 5 s at most: what must appear "without a reload"
# gets a few refreshes' time.
LIVE = 20_000


def cli(*args, check=True):
    """The real CLI, as a user beside the browser would run it."""
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"reactor-fabric {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def last_line(text):
    return text.strip().splitlines()[-1].strip()


class Run:
    def __init__(self, name, page):
        self.name = name
        self.page = page
        self.steps = 0
        self.console = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def shot(self, step):
        self.steps += 1
        self.page.screenshot(path=os.path.join(ARTIFACTS, f"{self.name}-{self.steps:02d}-{step}.png"), full_page=True)
        print(f"step {self.steps}: {step}", flush=True)

    def failed(self):
        try:
            self.shot("failure")
        except Exception as e:  # the page may be gone
            print(f"(no failure screenshot: {e})")
        path = os.path.join(ARTIFACTS, f"{self.name}-console.log")
        with open(path, "w") as f:
            f.write("\n".join(self.console) + "\n")
        print(f"console log: {path}\n" + "\n".join(self.console[-30:]))

    def no_page_errors(self):
        errors = [c for c in self.console if c.startswith("pageerror")]
        assert not errors, f"the page threw: {errors}"


def open_view(page, path):
    """Opens `path` and waits until the app has drawn a heading. Chromium
    drops requests in flight with net::ERR_NETWORK_CHANGED when the host's
    interfaces change (the suite's sandbox and container tests make network
    namespaces and veths beside this one), which can leave the page without
    its modules: such a page is loaded again, as a person would."""
    for attempt in range(4):
        if attempt == 0:
            page.goto(URL + path)
        else:
            print(f"(the page at {path} did not start; loading it again)", flush=True)
            page.reload()
        try:
            page.locator("h1").first.wait_for(timeout=8_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the page at {path} never started")


def sign_in(run, path="/"):
    """Opens `path` signed out: the sign-in form shows, then the view asked for."""
    page = run.page
    open_view(page, path)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    signed_in = page.get_by_role("button", name="Sign out")
    for attempt in range(2):
        page.get_by_role("button", name="Sign in").click()
        try:
            signed_in.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            # A request dropped by a network change (see open_view) says
            # "cannot reach the server" in place: a person would try again.
            if attempt:
                raise
            print("(sign-in did not go through; trying again)", flush=True)
    expect(page).to_have_url(URL + path)
    run.shot(f"signed-in-at-{path.strip('/') or 'overview'}")


def tasks(run):
    page = run.page
    # A wrong password says so in place.
    open_view(page, "/tasks")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("password")
    run.shot("wrong-password")
    sign_in(run, "/tasks")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Tasks")

    # A task created with the CLI appears without a reload.
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; sleep 1; done; sleep 120"
    created = cli("task", "create", "--name", "web-demo", "--command", script)
    task_id = last_line(created.stdout)
    row = page.locator(f'tr[data-task-id="{task_id}"]')
    expect(row).to_be_visible(timeout=LIVE)
    expect(row).to_contain_text("web-demo")
    run.shot("cli-task-in-list")

    # Its page streams its log lines live.
    row.get_by_role("link", name="web-demo").click()
    expect(page).to_have_url(URL + f"/tasks/{task_id}")
    log = page.get_by_test_id("task-log")
    expect(log).to_contain_text("line-1", timeout=LIVE)
    expect(log).to_contain_text("line-3", timeout=LIVE)
    expect(page.get_by_test_id("task-status")).to_have_text("running")
    run.shot("log-streaming")

    # Cancel from the page; the status follows.
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.get_by_test_id("task-status")).to_have_text("canceled", timeout=LIVE)
    run.shot("canceled")
    shown = cli("-o", "json", "task", "get", task_id).stdout
    assert '"canceled"' in shown, shown

    # The view survives a reload (its own path), and filters live in the URL.
    open_view(page, f"/tasks/{task_id}")
    expect(page.get_by_test_id("task-status")).to_have_text("canceled")
    open_view(page, "/tasks?status=canceled")
    expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_be_visible()
    open_view(page, "/tasks?status=completed")
    expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_have_count(0)
    # Searched by the server: name, prompt or command text.
    open_view(page, "/tasks")
    page.get_by_label("Search").fill("LINE-$I")
    expect(page).to_have_url(re.compile(r"q=LINE-%24I"))
    expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_be_visible()
    page.get_by_label("Search").fill("no such text anywhere")
    expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_have_count(0)
    open_view(page, "/tasks?priority=normal&q=web-demo")
    expect(page.get_by_label("Priority")).to_have_value("normal")
    expect(page.locator(f'tr[data-task-id="{task_id}"]')).to_be_visible()
    run.shot("filtered")

    # Several selected and canceled at once.
    ids = [last_line(cli("task", "create", "--name", f"bulk-{i}", "--command", "sleep 120").stdout) for i in range(2)]
    open_view(page, "/tasks?q=bulk-")
    for task in ids:
        page.get_by_label(f"Select task {task}").check()
    page.get_by_role("button", name="Cancel selected").click()
    for task in ids:
        expect(page.locator(f'tr[data-task-id="{task}"] .status')).to_have_text("canceled", timeout=LIVE)
        assert '"canceled"' in cli("-o", "json", "task", "get", task).stdout
    run.shot("bulk-canceled")

    # Created from the form, then rerun from its page.
    page.get_by_role("button", name="New task").click()
    form = page.get_by_role("form", name="New task")
    form.get_by_label("Name").fill("web-form")
    form.get_by_label("Commands").fill("echo from-the-form")
    form.get_by_label("Priority").select_option("high")
    form.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("web-form")
    expect(page.get_by_test_id("task-status")).to_have_text("completed", timeout=LIVE)
    expect(page.get_by_test_id("task-log")).to_contain_text("from-the-form")
    first = page.url
    page.get_by_role("button", name="Rerun").click()
    expect(page).not_to_have_url(first)
    expect(page.get_by_test_id("task-status")).to_have_text("completed", timeout=LIVE)
    shown = cli("-o", "json", "task", "list", "--search", "web-form").stdout
    assert shown.count('"high"') == 2, shown
    run.shot("created-and-rerun")
    run.no_page_errors()


def agents_and_approvals(run):
    page = run.page
    sign_in(run, "/agents")

    # Spawn an agent from the form.
    page.get_by_label("Agent id").fill("web-sleeper")
    page.get_by_label("Command").fill("sleep 600")
    page.get_by_label("Isolation").select_option("none")
    page.get_by_role("button", name="Spawn").click()
    row = page.locator('tr[data-agent-id="web-sleeper"]')
    expect(row).to_be_visible(timeout=LIVE)
    # A program that never speaks the protocol stays "starting": it runs.
    expect(row).to_contain_text(re.compile("starting|running"), timeout=LIVE)
    run.shot("agent-spawned")
    shown = cli("-o", "json", "agent", "get", "web-sleeper").stdout
    assert "sleep 600" in shown, shown

    # An agent asks the policies about an action that needs a human: the
    # approval shows in the inbox without a reload, is approved there, and
    # the agent's task completes with the decision.
    cli("policy", "apply", "-f", os.path.join(REPO, "policies/dev.toml"))
    # The Python example agent, spawned from a pasted TOML config.
    agent = os.path.join(REPO, "examples/python-agent/agent.py")
    config = "\n".join([
        'id = "py"',
        f'command = "python3 {agent}"',
        "[isolation]",
        'level = "none"',
        f'read_only_paths = ["{os.path.join(REPO, "examples")}"]',
    ])
    page.get_by_label("Config (TOML or JSON)").fill(config)
    page.get_by_role("button", name="Spawn").click()
    expect(page.locator('tr[data-agent-id="py"]')).to_be_visible(timeout=LIVE)
    run.shot("agent-spawned-from-toml")
    shown = cli("-o", "json", "agent", "get", "py").stdout
    assert "read_only_paths" in shown and "examples" in shown, shown
    created = cli("task", "create", "--agent", "py", "--prompt", "check:net:connect:prod-db")
    task_id = last_line(created.stdout)
    page.get_by_role("link", name="Approvals").click()
    expect(page).to_have_url(URL + "/approvals")
    item = page.locator("[data-approval-id]").first
    expect(item).to_be_visible(timeout=LIVE)
    expect(item).to_contain_text("net:connect:prod-db")
    run.shot("approval-pending")
    item.get_by_label("Reason").fill("checked by the web test")
    started = time.monotonic()
    item.get_by_role("button", name="Approve").click()
    result = cli("task", "result", task_id, "--wait", "--timeout", "60s")
    waited = time.monotonic() - started
    assert "allow" in result.stdout, result.stdout
    print(f"the agent went on {waited:.2f} s after the click (result included)")
    # The issue asks for "within a second"; the CLI's own start and its
    # result poll are in this number too, so the bound here is looser.
    assert waited < 5, f"the agent took {waited:.2f} s to go on"
    expect(page.locator("[data-approval-id]")).to_have_count(0, timeout=LIVE)
    shown = cli("-o", "json", "approval", "list", "--status", "all").stdout
    assert "checked by the web test" in shown, shown

    # A denial with its reason: the agent is told no.
    created = cli("task", "create", "--agent", "py", "--prompt", "check:net:connect:prod-api")
    denied_task = last_line(created.stdout)
    item = page.locator("[data-approval-id]").first
    expect(item).to_contain_text("net:connect:prod-api", timeout=LIVE)
    item.get_by_label("Reason").fill("not today")
    item.get_by_role("button", name="Deny").click()
    result = cli("task", "result", denied_task, "--wait", "--timeout", "60s", check=False)
    assert "deny" in result.stdout, result.stdout + result.stderr
    assert "not today" in cli("-o", "json", "approval", "list", "--status", "denied").stdout
    run.shot("denied")

    # Terminate from the agent's page, with a drain timeout.
    open_view(page, "/agents/web-sleeper")
    page.get_by_label("Drain timeout (s)").fill("1")
    page.get_by_role("button", name="Terminate").click()
    deadline = time.monotonic() + 20
    while '"running"' in cli("-o", "json", "agent", "get", "web-sleeper").stdout or '"starting"' in cli("-o", "json", "agent", "get", "web-sleeper").stdout:
        assert time.monotonic() < deadline, "web-sleeper still runs"
        time.sleep(0.5)
    run.shot("terminated")
    run.shot("approved")
    run.no_page_errors()


def policies(run):
    page = run.page
    sign_in(run, "/policies")
    editor = page.locator("form.editor")
    alert = editor.get_by_role("alert")
    page.get_by_label("Policy id").fill("web-broken")
    # A syntax error, said in place.
    page.get_by_label("Policy", exact=True).fill('{"rules": [ {"action_pattern": "shell:*", "effect": "allow" ')
    page.get_by_role("button", name="Save").click()
    expect(alert).to_contain_text("not valid JSON")
    run.shot("policy-syntax-error-in-place")
    # A document the server refuses: its message, in place.
    page.get_by_label("Policy", exact=True).fill('{"scope": {"tenant": "default"}, "rules": [{"action_pattern": "shell:*", "effect": "perhaps"}]}')
    page.get_by_role("button", name="Save").click()
    expect(alert).to_contain_text("perhaps")
    run.shot("policy-server-error-in-place")
    assert "web-broken" not in cli("policy", "list").stdout
    # A valid one is saved, listed and decides.
    page.get_by_label("Policy", exact=True).fill('{"scope": {"tenant": "default"}, "priority": 5, "rules": [{"action_pattern": "shell:curl *", "effect": "deny"}]}')
    page.get_by_role("button", name="Save").click()
    expect(page.locator('a[data-policy-id="web-broken"]')).to_be_visible()
    assert "web-broken" in cli("policy", "list").stdout
    checker = page.locator("form", has=page.get_by_role("button", name="Check"))
    checker.get_by_label("Agent").fill("shell")
    checker.get_by_label("Action").fill("shell:curl example.com")
    checker.get_by_role("button", name="Check").click()
    expect(page.get_by_test_id("check-result")).to_contain_text("deny")
    run.shot("policy-saved-and-checked")

    # A budget set through the form is the fabric's.
    page.get_by_role("link", name="Budgets").click()
    limit_form = page.locator("form", has=page.get_by_role("button", name="Set limit"))
    limit_form.get_by_label("Entity", exact=True).fill("agent:shell")
    limit_form.get_by_label("Max tokens per day").fill("12345")
    limit_form.get_by_role("button", name="Set limit").click()
    expect(page.locator('section[data-entity="agent:shell"]')).to_be_visible(timeout=LIVE)
    assert "12345" in cli("-o", "json", "budget", "get", "--agent", "shell").stdout
    run.shot("budget-set")

    # The audit trail (the check above is in it) downloads as CSV.
    page.get_by_role("link", name="Audit").click()
    expect(page.locator("tr[data-audit-id]").first).to_be_visible(timeout=LIVE)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    path = download.value.path()
    with open(path) as f:
        csv_text = f.read()
    assert csv_text.splitlines()[0].startswith("ts,tenant,actor,"), csv_text[:200]
    assert "shell:curl example.com" in csv_text, csv_text[:500]
    run.shot("audit")

    # Sign out: the sign-in form again, and a reload does not bring the session back.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    open_view(page, "/tasks")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    run.shot("signed-out")
    run.no_page_errors()


VIEWS = ["/", "/tasks", "/agents", "/agents/shell", "/approvals", "/policies", "/budgets", "/audit", "/gateway", "/tools", "/alerts"]


def every_view(run):
    """Each view at its own path on a phone-sized screen in dark mode: it
    renders a heading, shows no error, throws nothing; the nav works from
    the keyboard."""
    page = run.page
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    cli("budget", "set", "--agent", "shell", "--max-tokens-per-day", "100000")
    for _ in range(2):
        cli("task", "create", "--wait", "--command", "true")
    sign_in(run, "/")
    # The overview counts every task by status (GET /v1/tasks/counts).
    expect(page.locator('strong[data-count="completed"]')).to_have_text("2")
    expect(page.locator('strong[data-count="failed"]')).to_have_text("0")
    for path in VIEWS:
        open_view(page, path)
        heading = page.get_by_role("heading", level=1)
        expect(heading).to_be_visible()
        expect(heading).not_to_be_empty()
        page.wait_for_load_state("networkidle")
        shown = [t for t in page.get_by_role("alert").all_inner_texts() if t.strip()]
        assert not shown, f"{path} shows an error: {shown}"
        run.shot(f"view-{path.strip('/').replace('/', '-') or 'overview'}")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)"), f"dark mode: body is {background}"
    # Every nav link is reachable on the narrow screen, and works from the keyboard.
    nav = page.get_by_role("navigation", name="Main")
    for name in ["Overview", "Tasks", "Agents", "Approvals", "Policies", "Budgets", "Audit", "Gateway", "Tools", "Alerts"]:
        link = nav.get_by_role("link", name=name, exact=True)
        link.scroll_into_view_if_needed()
        expect(link).to_be_visible()
    nav.get_by_role("link", name="Audit", exact=True).focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(URL + "/audit")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Audit")
    run.shot("keyboard-navigated")
    run.no_page_errors()


def tools(run):
    """The MCP servers registered on the CLI are listed with their secrets
    by name only; a server's tools open on request (the fabric starts it)."""
    page = run.page
    py_dir = os.path.join(REPO, "crates/fabric-cli/tests/it/py")
    read_only = []
    for path in {sys.prefix, sys.base_prefix, py_dir}:
        read_only += ["--read-only", path]
    venv_python = os.path.join(sys.prefix, "bin", "python")
    cli("mcp", "add", "flaky", "--isolation", "none", "--description", "misbehaves on purpose",
        "--command", f"{venv_python} {py_dir}/flaky_mcp_server.py", "--secret-env", "FLAKY_KEY=do-not-show", *read_only)
    sign_in(run, "/tools")
    row = page.locator('tr[data-server="flaky"]')
    expect(row).to_contain_text("stdio")
    expect(row).to_contain_text("FLAKY_KEY")
    expect(row).to_contain_text("misbehaves on purpose")
    assert "do-not-show" not in page.content(), "a secret's value is on the page"
    run.shot("tools-listed")
    row.get_by_role("button", name="Show tools").click()
    tools = page.locator('tr[data-tools-of="flaky"]')
    expect(tools.locator('tr[data-tool="echo"]')).to_contain_text("flaky__echo")
    expect(tools.locator('tr[data-tool="echo"]')).to_contain_text("tool:flaky/echo")
    run.shot("tools-opened")
    row.get_by_role("button", name="Hide tools").click()
    expect(tools).to_have_count(0)
    run.no_page_errors()


SCENARIOS = {"tasks": tasks, "agents_and_approvals": agents_and_approvals, "policies": policies,
             "every_view": every_view, "tools": tools}


def main():
    name = sys.argv[1]
    scenario = SCENARIOS[name]
    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as p:
        # Root in a container: Chromium's own sandbox cannot start there.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.set_default_timeout(10_000)
        page = context.new_page()
        run = Run(name, page)
        try:
            scenario(run)
        except Exception:
            traceback.print_exc()
            run.failed()
            browser.close()
            sys.exit(1)
        browser.close()
    print(f"scenario {name}: ok")


if __name__ == "__main__":
    main()
