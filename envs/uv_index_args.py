"""Print uv's command-line options for the package indexes pip is configured with.

`make setup` installs with uv (parallel unpacking and bytecode compilation), but uv does not read
pip's configuration: a machine whose pip.conf or PIP_* variables point at a mirror or a local wheel
folder (e.g. the CPU build of torch) would otherwise resolve from PyPI and get other files. Reads
`pip config list` (every scope, PIP_* variables included; where a key is set in several, the one
pip uses) and prints uv's ``--index-url``, ``--extra-index-url``, ``--find-links`` and
``--no-index`` for it, one option per value.

Usage: python envs/uv_index_args.py   (with the interpreter whose pip is configured)
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys

# pip option -> uv option; pip's configuration takes whitespace-separated lists for the last two.
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "find-links": "--find-links"}  # fmt: skip
# pip's precedence when one key is set in several scopes: the later one here wins.
SCOPES = ("global", "user", "site", ":env:")


def uv_arguments(pip_config_lines: list[str]) -> list[str]:
    """uv options for ``pip config list`` output lines such as
    ``global.extra-index-url='file:///a file:///b'`` or ``:env:.find-links='/opt/wheels'``."""
    values: dict[str, tuple[int, str]] = {}  # option -> (scope rank, value) of the winning scope
    for line in pip_config_lines:
        key, _, raw = line.partition("=")
        scope, _, name = key.rpartition(".")
        rank = SCOPES.index(scope) if scope in SCOPES else 0
        value = str(ast.literal_eval(raw) if raw.startswith(("'", '"')) else raw)
        if name in (*OPTIONS, "no-index") and rank >= values.get(name, (-1, ""))[0]:
            values[name] = (rank, value)
    arguments: list[str] = []
    for name, option in OPTIONS.items():
        for item in values.get(name, (0, ""))[1].split():
            arguments += [option, item]
    if values.get("no-index", (0, ""))[1].lower() in ("1", "true", "yes", "on"):
        arguments.append("--no-index")
    return arguments


def main() -> int:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    lines = listed.stdout.splitlines() if listed.returncode == 0 else []
    print(shlex.join(uv_arguments(lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
