"""Small helpers shared by test modules: a real HTTP server on 127.0.0.1 serving a folder, file listings, and a
command's main() run in the test process."""

import functools
import http.server
import threading
from collections.abc import Callable
from pathlib import Path


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that hangs up early (torchvision's redirect probe) is not an error here


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def start_server(folder: Path, handler: type = QuietHandler) -> QuietServer:
    """A server on a free port of 127.0.0.1 serving `folder`, running in a daemon thread; shut it down."""
    server = QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url_of(server: QuietServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def files_under(folder: Path) -> list[str]:
    """Every file and folder below `folder`, relative to it; [] if it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def run_main(main: Callable[[list[str]], int], args: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a command's main(args) run in this process: the same code as
    `python -m ...` up to the exit, without a new interpreter's imports (about 2 s a call). An error that
    is not a clean exit (a traceback) raises here and fails the test; the tests that start the real
    process cover its own exit status and output."""
    try:
        status = main(args)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err
