"""make setup's uv gets the package indexes pip is configured with (envs/uv_index_args.py)."""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "envs" / "uv_index_args.py"


def load_module():
    spec = importlib.util.spec_from_file_location("uv_index_args", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_pip_configuration_becomes_uv_options() -> None:
    uv_arguments = load_module().uv_arguments
    lines = [
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'",
        "global.find-links='/opt/wheels'",
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",  # not an index: ignored
        ":env:.find-links='/opt/wheels'",  # the same value from PIP_FIND_LINKS
        "global.index-url='https://mirror.example/simple'",
        "user.index-url='https://user.example/simple'",  # user beats global, as in pip
    ]
    assert uv_arguments(lines) == [
        "--index-url", "https://user.example/simple",
        "--extra-index-url", "file:///opt/pypi/simple",
        "--extra-index-url", "file:///opt/pypi-more/simple",
        "--find-links", "/opt/wheels",
    ]  # fmt: skip
    assert uv_arguments([]) == []
    assert uv_arguments([":env:.no-index='true'", "global.no-index='false'"]) == ["--no-index"]


def test_script_prints_this_interpreters_pip_configuration_as_one_shell_line() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True, timeout=60
    )
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    )
    expected = load_module().uv_arguments(listed.stdout.splitlines())
    assert result.stdout.count("\n") == 1 and shlex.split(result.stdout) == expected
