"""The commands of the README and of the docs/ pages, and a way to run one exactly as printed.

A command runs in a scratch folder laid out like a checkout on our machines: `.venv` is this test run's
environment and `../shared/data/omniglot` holds the test data. So `.venv/bin/python`, `python` and
`../shared/data/omniglot` mean what a reader's shell would make of them, and the command string itself
is handed to bash unchanged.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
# Inline code spans that are commands (the rest of the README's inline code is names and values).
INLINE_COMMAND = re.compile(r"^(python|\.venv/bin/|ray |kubectl )")


def bash_commands(text: str) -> list[str]:
    """Every line of a Markdown text's ```bash blocks (continuations joined, comments dropped), with runs
    of spaces made one."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(" ".join(line.split()))
    return list(dict.fromkeys(commands))


def inline_commands(text: str) -> list[str]:
    """Every inline code span of a Markdown text's prose that is a command (or names one)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return list(dict.fromkeys(span for span in re.findall(r"`([^`\n]+)`", prose) if INLINE_COMMAND.match(span)))


def readme_commands(text: str | None = None) -> list[str]:
    """Every command of the README (or of another Markdown text, such as docs/cluster.md): its ```bash
    lines, then its inline commands."""
    text = README.read_text() if text is None else text
    return list(dict.fromkeys(bash_commands(text) + inline_commands(text)))


def documented_pages() -> list[Path]:
    """Every page that prints commands: the README, CONTRIBUTING.md, then each docs/*.md page."""
    return [README, REPO / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]


def page_commands(page: Path) -> list[str]:
    """Every command of one page (the README or a docs/*.md page): its ```bash lines, then its inline commands."""
    return readme_commands(page.read_text())


def scratch_checkout(tmp: Path, omniglot_root: Path) -> Path:
    checkout = tmp / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    (tmp / "shared" / "data").mkdir(parents=True)
    (tmp / "shared" / "data" / "omniglot").symlink_to(omniglot_root, target_is_directory=True)
    return checkout


def command_env(**changes: str | None) -> dict[str, str]:
    """This environment with this checkout's code first on the path; a change of None removes the variable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_as_printed(
    command: str, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env or command_env(), capture_output=True, text=True, timeout=timeout
    )
