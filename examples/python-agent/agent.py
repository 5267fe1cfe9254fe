#!/usr/bin/env python3
"""A reactor-fabric agent in Python 3, standard library only.

It speaks the agent protocol (docs/AGENT_PROTOCOL.md): long-poll for a task,
log a line, heartbeat while working, complete. Its "work" is deterministic so
tests can check it: stdout is the prompt in upper case, output is
{"words": N, "agent": id, "workspace": dir}; a prompt starting with "fail:"
fails the task, "sleep:N" takes N seconds first, and "check:ACTION" asks the
fabric's policies whether it may do ACTION (waiting for an approver when a
policy requires approval) and reports the decision in the output.
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

LEASE_WAIT = 30           # seconds one lease call waits for a task (server max: 60)
TOKEN_RENEWAL = 5 * 60    # tokens live 15 minutes: renew well before
FALLBACK_HEARTBEAT = 10   # seconds, when the lease's expiry is unusable
APPROVAL_POLL = 30        # seconds one policy check waits for an approver (server max: 60)


class ApiError(Exception):
    """The fabric answered with an error: {"error": {"code", "message", ...}}."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


class Fabric:
    """The agent protocol over urllib. Safe to share between threads."""

    def __init__(self, url, token, agent_id):
        self.url, self.agent_id = url.rstrip("/"), agent_id
        self._token, self._lock = token, threading.Lock()

    def call(self, path, body=None, timeout=30, method="POST", traceparent=None):
        """POSTs JSON (or GETs); returns (status, decoded body or None). Raises ApiError,
        or OSError (urllib.error.URLError, timeouts) when the fabric is unreachable.
        `traceparent` (a task's W3C trace context) joins the call to its trace."""
        with self._lock:
            token = self._token
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if traceparent:
            headers["traceparent"] = traceparent
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:  # the fabric answered 4xx/5xx
            try:
                err = json.loads(e.read())["error"]
                raise ApiError(e.code, err["code"], err["message"]) from None
            except (ValueError, KeyError, TypeError):
                raise ApiError(e.code, "http_error", e.reason) from None

    def check(self, action, resource=None):
        """May this agent do `action`? Blocks while an approval is pending (the
        fabric times it out as a deny). Returns the final answer, a dict with
        "decision" ("allow" or "deny"), "policy_id", "rule", "approval_id"."""
        body = {"action": action, "wait": APPROVAL_POLL}
        if resource is not None:
            body["resource"] = resource
        _, answer = self.call("/v1/agent/check", body, timeout=APPROVAL_POLL + 30)
        while answer["decision"] == "require_approval":
            _, answer = self.call(f"/v1/agent/approvals/{answer['approval_id']}?wait={APPROVAL_POLL}",
                                  timeout=APPROVAL_POLL + 30, method="GET")
        return answer

    def renew_token(self):
        _, body = self.call("/v1/agent/token")
        with self._lock:
            self._token = body["token"]


def seconds_left(expires_at):
    """Seconds until an RFC 3339 timestamp such as 2026-01-02T03:04:05.678Z."""
    try:
        t = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        return (t - datetime.now(timezone.utc)).total_seconds()
    except (AttributeError, ValueError):
        return 0


def keep_lease(fabric, task_id, epoch, expires_at, done, lost):
    """Heartbeat thread: renews the lease at a third of the time left until `done`;
    sets `lost` when the fabric says the lease is stale (canceled, timed out, re-leased)."""
    while True:
        left = seconds_left(expires_at)
        if done.wait(left / 3 if left > 0 else FALLBACK_HEARTBEAT):
            return
        try:
            _, body = fabric.call(f"/v1/agent/tasks/{task_id}/heartbeat", {"epoch": epoch})
            expires_at = body["lease_expires_at"]
        except ApiError as e:
            if e.code == "stale_lease" or e.status == 404:  # 404: the fabric no longer knows the task
                lost.set()
                return
            print(f"heartbeat failed: {e}", file=sys.stderr)
            expires_at = None  # retry after the fallback interval
        except OSError as e:
            print(f"heartbeat failed: {e}", file=sys.stderr)
            expires_at = None


def renew_tokens(fabric):
    """Token thread: a fresh token every TOKEN_RENEWAL seconds (sooner after a failure)."""
    delay = TOKEN_RENEWAL
    while True:
        time.sleep(delay)
        try:
            fabric.renew_token()
            delay = TOKEN_RENEWAL
        except (ApiError, OSError) as e:
            print(f"token renewal failed: {e}", file=sys.stderr)
            delay = 5


def do_the_work(fabric, prompt):
    """The job: deterministic, so a test can predict the result. Returns (status, result)."""
    if prompt.startswith("fail:"):
        return "failed", {"stdout": "", "stderr": "", "error": prompt[len("fail:"):].strip()}
    if prompt.startswith("check:"):  # ask the policies (may wait for an approver)
        answer = fabric.check(prompt[len("check:"):])
        return "completed", {"stdout": answer["decision"], "stderr": "", "exit_code": 0,
                             "output": {"decision": answer["decision"], "rule": answer.get("rule"),
                                        "approval_id": answer.get("approval_id")}}
    if prompt.startswith("sleep:"):  # a slow task (the heartbeat thread keeps its lease)
        time.sleep(float(prompt[len("sleep:"):]))
    return "completed", {
        "stdout": prompt.upper(), "stderr": "", "exit_code": 0,
        "output": {"words": len(prompt.split()), "agent": fabric.agent_id,
                   "workspace": os.environ.get("FABRIC_WORKSPACE_DIR", "")},
    }


def transient(e):
    """Whether retrying may help: the fabric unreachable, restarting or overloaded."""
    return isinstance(e, OSError) or (isinstance(e, ApiError) and (e.status >= 500 or e.status == 429))


def call_retrying(fabric, path, body, attempts=8, traceparent=None):
    """fabric.call, retrying transient failures with backoff (0.1 s doubling to 5 s)."""
    delay = 0.1
    for attempt in range(attempts):
        try:
            return fabric.call(path, body, traceparent=traceparent)
        except (ApiError, OSError) as e:
            if not transient(e) or attempt == attempts - 1:
                raise
            print(f"{path}: {e}; retrying in {delay:.1f}s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, 5)


def work_on(fabric, lease):
    """One leased task: log, work (heartbeating meanwhile), complete."""
    task, epoch = lease["task"], lease["epoch"]
    task_id, prompt = task["id"], task["input"].get("prompt") or ""
    # The trace context of this attempt: sent with the calls about the task (and
    # what a real agent would hand its subprocesses as TRACEPARENT).
    traceparent = task.get("traceparent")
    done, lost = threading.Event(), threading.Event()
    heartbeat = threading.Thread(target=keep_lease, daemon=True,
                                 args=(fabric, task_id, epoch, lease["lease_expires_at"], done, lost))
    heartbeat.start()
    try:
        call_retrying(fabric, f"/v1/agent/tasks/{task_id}/events", {"epoch": epoch, "logs": [
            {"stream": "stdout", "line": f"python agent {fabric.agent_id} working on {len(prompt)} bytes"}]},
            traceparent=traceparent)
        status, result = do_the_work(fabric, prompt)
        if lost.is_set():  # canceled meanwhile: never complete a task we lost
            print(f"task {task_id}: lease lost, dropping it", file=sys.stderr)
            return
        call_retrying(fabric, f"/v1/agent/tasks/{task_id}/complete",
                      {"epoch": epoch, "status": status, "result": result}, traceparent=traceparent)
        print(f"task {task_id}: {status}", file=sys.stderr)
    except ApiError as e:
        # stale_lease: canceled, timed out or re-leased. Anything else: the fabric
        # gives the task out again when its lease expires.
        print(f"task {task_id}: dropped ({e})", file=sys.stderr)
    except OSError as e:
        print(f"task {task_id}: dropped, the fabric stayed unreachable ({e})", file=sys.stderr)
    finally:
        done.set()
        heartbeat.join()


def main():
    try:
        fabric = Fabric(os.environ["FABRIC_URL"], os.environ["FABRIC_TOKEN"], os.environ["FABRIC_AGENT_ID"])
    except KeyError as e:
        sys.exit(f"environment variable {e.args[0]} is not set: the fabric sets it when it starts an agent")
    threading.Thread(target=renew_tokens, args=(fabric,), daemon=True).start()
    backoff = 0.1
    while True:
        try:
            status, lease = fabric.call(f"/v1/agent/lease?wait={LEASE_WAIT}", timeout=LEASE_WAIT + 30)
            if status == 200:
                work_on(fabric, lease)
            backoff = 0.1  # 204: nothing within the wait, ask again at once
        except (ApiError, OSError) as e:
            if isinstance(e, ApiError) and e.code == "agent_draining":
                print("agent is draining: exiting", file=sys.stderr)
                return 0
            if not transient(e):  # a revoked token, a removed agent: retrying will not help
                sys.exit(f"the fabric refused to lease: {e}")
            # Connection refused, reset, timed out, 5xx: the fabric may be restarting.
            print(f"lease failed: {e}; retrying in {backoff:.1f}s", file=sys.stderr)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5)


if __name__ == "__main__":
    sys.exit(main())
