"""Run the CLI in this process, as the tests do: one helper for every test file."""

from __future__ import annotations

import json

import pytest

from alexrepro.cli import main


def run_cli(args, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code (0 for success), stdout and stderr of one CLI command run in this process."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def ok_json(args, capsys: pytest.CaptureFixture[str]) -> dict:
    """The one --json object of a command that must succeed."""
    code, stdout, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    return json.loads(stdout)
