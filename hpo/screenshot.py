"""`python -m hpo.screenshot`: screenshots of a study in the MLflow UI, opened in headless Chromium.

It opens the study's link as a new user would (a fresh browser profile) and saves what it shows.

    python -m hpo.screenshot --tracking-uri sqlite:///$PWD/mlflow.db --experiment NAME --out docs

It saves <prefix>-<page>.png for each page and <prefix>-pages.json with what each page showed (its
link, final URL, visible text and charted runs), and prints their paths.

A local store (sqlite:) is served from a copy by a real `mlflow server` on a free 127.0.0.1 port, stopped
afterwards; a tracking server (http://...) is opened as it is. The browser is Debian's Chromium
(/usr/bin/chromium) driven by Playwright (`pip install -e '.[browser]'`), every page in a fresh context:
no stored settings, like a first visit. The browser test (tests/test_ui.py) runs this same code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .spec import sqlite_path
from .tracking import FINAL_VIEW, RUNS_VIEW, SAVED_VIEWS, runs_link

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium opens connections of its own, which a closed
# network refuses many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1500, "height": 900}
TIMEOUT_MS = 90_000  # a cold MLflow UI on a busy 2-core machine
SETTLE_MS = 1_000
# [chart title, names of its traces (runs)] of each Plotly chart the page has drawn (Plotly keeps a
# chart's traces in its element's `data`).
CHARTED = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(chart => [
    chart.closest('[data-testid=experiment-view-compare-runs-card]')?.innerText.split('\\n')[0] ?? '',
    (chart.data || []).map(trace => trace.name)])"""


@dataclass(frozen=True)
class Shot:
    """One page as the browser showed it."""

    link: str  # the link opened
    url: str  # where the page was once ready (the UI adds its state to the link)
    text: str  # its visible text
    path: Path  # its screenshot
    charted: dict[str, set[str]]  # chart title -> the runs it draws, of the charts drawn (in view)


def free_ports(n: int = 1) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (all bound at once, so none repeats; then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def serve(tracking_uri: str) -> Iterator[str]:
    """The base URL of an MLflow UI showing `tracking_uri`: the server itself, or a real `mlflow server`
    on 127.0.0.1 over a copy of a SQLite store (the store is only read), stopped on exit."""
    if tracking_uri.startswith(("http://", "https://")):
        yield tracking_uri.rstrip("/")
        return
    store = sqlite_path(tracking_uri)
    if store is None:
        raise ValueError(f"serve a sqlite:/// store or open a server's http:// URI, not {tracking_uri}")
    with tempfile.TemporaryDirectory(prefix="hpo-mlflow-ui-") as folder:
        copy = Path(folder) / "mlflow.db"
        with sqlite3.connect(store) as source, sqlite3.connect(copy) as target:
            source.backup(target)  # consistent even while a study writes to it
        (port,) = free_ports()
        log = open(Path(folder) / "server.log", "w")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{copy}",
                "--artifacts-destination",
                str(Path(folder) / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # the lean server
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_healthy(base, server, Path(folder) / "server.log")
            yield base
        finally:
            stop_process(server)
            log.close()


def _wait_healthy(base: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({server.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s: {log.read_text()[-2000:]}")


def stop_process(process: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, with everything it started."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def chromium():
    """Headless Chromium (Debian's) under Playwright, closed on exit."""
    from playwright.sync_api import sync_playwright  # the `browser` extra

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def capture(browser, base: str, experiment: str, out: str | Path, prefix: str = "mlflow") -> dict[str, Shot]:
    """Open a study's pages in the MLflow UI at `base`, each in a fresh browser context, and screenshot
    them as `<prefix>-<page>.png`: "runs" (the link the study prints), "final" (its head-to-head view),
    "charts" (the runs' charts) and "experiments" (the experiments list).

    A page is ready once it shows the newest run it lists (the experiment's name for the list). Its
    text is taken then; the MLflow Assistant panel, which a first visit opens beside the page, is
    closed before the screenshot.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(base)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no experiment {experiment!r} at {base}")
    newest = {}
    for view in (RUNS_VIEW, FINAL_VIEW):
        state = SAVED_VIEWS[view][1]
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=state["searchFilter"],
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise LookupError(f"experiment {experiment!r} has no runs for {view} ({state['searchFilter']})")
        newest[view] = runs[0].info.run_name
    link = runs_link(base, found.experiment_id)
    pages = (
        ("runs", link, newest[RUNS_VIEW], None),
        ("final", runs_link(base, found.experiment_id, FINAL_VIEW), newest[FINAL_VIEW], None),
        ("charts", f"{link}&compareRunsMode=CHART", newest[RUNS_VIEW], ".js-plotly-plot"),
        ("experiments", f"{base}/#/experiments?workflowType=machine_learning", experiment, None),
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shots = {}
    for name, url, ready, drawn in pages:
        context = browser.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.get_by_text(ready, exact=True).first.wait_for()
            if drawn:  # the charts are drawn after the run list
                page.locator(drawn).first.wait_for()
            text = page.inner_text("body")
            charted = {title: set(names) for title, names in page.evaluate(CHARTED)}
            assistant = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
            if assistant.count():
                assistant.first.click()
                assistant.first.wait_for(state="detached")
            page.wait_for_timeout(SETTLE_MS)  # the table and charts resize to the freed width
            path = out / f"{prefix}-{name}.png"
            page.screenshot(path=path)
            shots[name] = Shot(url, page.url, text, path, charted)
        finally:
            context.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpo.screenshot", description=__doc__.splitlines()[0])
    p.add_argument(
        "--tracking-uri", required=True, help="the study's store (sqlite:///...) or tracking server (http://...)"
    )
    p.add_argument("--experiment", required=True, help="the study's name (its MLflow experiment)")
    p.add_argument("--out", default=".", help="folder for the screenshots (default: .)")
    p.add_argument("--prefix", default="mlflow", help="file name prefix (default: mlflow)")
    args = p.parse_args(argv)
    try:
        with serve(args.tracking_uri) as base, chromium() as browser:
            shots = capture(browser, base, args.experiment, args.out, args.prefix)
    except (LookupError, ValueError) as error:
        print(f"python -m hpo.screenshot: error: {error}", file=sys.stderr)
        return 2
    # What each page showed, beside its screenshot: the browser test reads it, and a reader can grep it.
    pages = Path(args.out) / f"{args.prefix}-pages.json"
    pages.write_text(
        json.dumps(
            {
                name: {
                    "server": base,
                    "link": shot.link,
                    "url": shot.url,
                    "text": shot.text,
                    "screenshot": str(shot.path),
                    "charted": {title: sorted(runs) for title, runs in shot.charted.items()},
                }
                for name, shot in shots.items()
            },
            indent=1,
        )
    )
    for shot in shots.values():
        print(shot.path)
    print(pages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
