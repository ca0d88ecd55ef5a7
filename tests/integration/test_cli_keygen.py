"""``lifekit keygen``: a key file the loader accepts, never overwritten by accident."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lifekit._cli import ExitCode, main
from lifekit._cluster._keys import load_key_file, parse_key_file


def test_keygen_writes_a_private_key_file_the_loader_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.key"
    assert main(["keygen", str(path), "--key-id", "k1"]) == ExitCode.OK
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key_file(path).signing.id == "k1"
    before = path.read_bytes()
    assert main(["keygen", str(path)]) == ExitCode.USAGE
    assert "already exists" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert main(["keygen", str(path), "--force"]) == ExitCode.OK
    assert path.read_bytes() != before


def test_keygen_print_gives_a_rotation_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--print", "--key-id", "next"]) == ExitCode.OK
    line = capsys.readouterr().out
    assert parse_key_file(line, where="printed line").signing.id == "next"
    assert main(["keygen"]) == ExitCode.USAGE
