"""fabric-bench dashboard's browser side (Playwright + Debian's chromium).

  dashboard_bench.py first-render URL PASSWORD SAMPLES
      prints one JSON line: {"ms": [...]} — per sample, a fresh browser
      context (cold cache) opening URL/tasks signed in, the time from the
      navigation's start to the first task row on screen.
  dashboard_bench.py watch URL PASSWORD BROWSERS SECONDS
      opens BROWSERS signed-in pages on URL/tasks (each refreshes every 5 s)
      and one task page each, prints "watching" once they show rows, holds
      them SECONDS, then prints "done".
"""

import json
import os
import sys
import time

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def session_cookies(browser, url, password):
    context = browser.new_context()
    answer = context.request.post(f"{url}/v1/auth/session",
                                  data={"username": "admin", "password": password},
                                  headers={"Origin": url})
    assert answer.ok, answer.text()
    cookies = context.cookies()
    context.close()
    return cookies


def first_render(url, password, samples):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        cookies = session_cookies(browser, url, password)
        times = []
        for _ in range(samples):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_cookies(cookies)
            page = context.new_page()
            page.goto(f"{url}/tasks", wait_until="commit")
            page.wait_for_selector("tr[data-task-id]", timeout=30_000)
            times.append(page.evaluate("performance.now()"))
            context.close()
        browser.close()
    print(json.dumps({"ms": times}), flush=True)


def watch(url, password, browsers, seconds):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        cookies = session_cookies(browser, url, password)
        pages = []
        for _ in range(browsers):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_cookies(cookies)
            tasks = context.new_page()
            tasks.goto(f"{url}/tasks")
            row = tasks.wait_for_selector("tr[data-task-id]", timeout=30_000)
            task = context.new_page()
            task.goto(f"{url}/tasks/{row.get_attribute('data-task-id')}")
            task.wait_for_selector("[data-testid=task-status]", timeout=30_000)
            pages += [tasks, task]
        print("watching", flush=True)
        time.sleep(seconds)
        print("done", flush=True)
        browser.close()


if __name__ == "__main__":
    mode, url, password = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "first-render":
        first_render(url, password, int(sys.argv[4]))
    else:
        watch(url, password, int(sys.argv[4]), float(sys.argv[5]))
