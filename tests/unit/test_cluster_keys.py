"""The cluster key file: what is accepted, what is refused and why, and generating one.

These tests run as root (the project's test machine): they chown files to ``nobody`` to
check the owner rule.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lifekit._cluster._keys import (
    KEY_FILE_MODE,
    MAX_KEY_FILE_BYTES,
    generate_key_file,
    load_key_file,
    new_key_line,
    parse_key_file,
)
from lifekit._cluster._wire import Key, KeyRing, Message, MessageType, Opener, Sealer
from lifekit.errors import ConfigError

NOBODY = 65534
HEX_KEY = bytes(range(32)).hex()
B64_KEY = base64.b64encode(bytes(range(50, 90))).decode()


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write(tmp_path / "cluster.key", f"k1 {HEX_KEY}\n")


def test_a_private_file_loads_in_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cluster.key",
        f"# the cluster key\n\n  new {B64_KEY}   # added 2024-05\nold {HEX_KEY}\n",
    )
    ring = load_key_file(path)
    assert ring == KeyRing([Key("new", bytes(range(50, 90))), Key("old", bytes(range(32)))])
    assert ring.signing.id == "new"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o610])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "cluster.key", f"k1 {HEX_KEY}\n", mode)
    with pytest.raises(ConfigError) as caught:
        load_key_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"mode {mode:04o}" in message
    assert f"chmod 600 {path}" in message


def test_only_user_bits_load(key_file: Path) -> None:
    # Every one of the 512 permission combinations: refused iff the group or others get any.
    for mode in range(0o1000):
        key_file.chmod(mode)
        if mode & 0o077:
            with pytest.raises(ConfigError, match="chmod 600"):
                load_key_file(key_file)
        else:
            assert load_key_file(key_file).signing.id == "k1"


def test_a_symlink_is_refused(key_file: Path, tmp_path: Path) -> None:
    link = tmp_path / "link.key"
    link.symlink_to(key_file)
    with pytest.raises(ConfigError, match="symbolic link") as caught:
        load_key_file(link)
    assert str(key_file) in str(caught.value)
    assert load_key_file(key_file).signing.id == "k1"


def test_a_file_of_another_user_is_refused(key_file: Path) -> None:
    assert os.geteuid() == 0, "the owner rule is checked as root"
    os.chown(key_file, NOBODY, NOBODY)
    with pytest.raises(ConfigError) as caught:
        load_key_file(key_file)
    message = str(caught.value)
    assert "owned by nobody (uid 65534)" in message
    assert f"chown root {key_file}" in message


def test_every_problem_with_the_file_is_reported_at_once(key_file: Path) -> None:
    os.chown(key_file, NOBODY, NOBODY)
    key_file.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        load_key_file(key_file)
    assert len(caught.value.issues) == 2
    assert "2 problems" in str(caught.value)


def test_a_config_error_is_a_value_error(key_file: Path) -> None:
    key_file.chmod(0o666)
    with pytest.raises(ValueError, match="group or others"):
        load_key_file(key_file)


def test_a_missing_file_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(
        ConfigError, match=f"no such key file; create one with `lifekit keygen {path}`"
    ):
        load_key_file(path)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key_file(directory)


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_key_file(fifo)


def test_a_huge_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "cluster.key", "#" * (MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="not a key file"):
        load_key_file(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # another\n"])
def test_a_file_without_keys_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "cluster.key", text)
    with pytest.raises(ConfigError, match="holds no key"):
        load_key_file(path)


def test_a_short_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    short = bytes(range(31)).hex()
    path = write(tmp_path / "cluster.key", f"k1 {short}\n")
    with pytest.raises(ConfigError) as caught:
        load_key_file(path)
    message = str(caught.value)
    assert f"{path}: line 1" in message
    assert "'k1' is 31 bytes long; use at least 32" in message
    assert short not in message


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "cluster.key", f"k1 {HEX_KEY}\n# x\nk1 {B64_KEY}\n")
    with pytest.raises(ConfigError, match="line 3: key id 'k1' is already used on line 1"):
        load_key_file(path)


def test_every_bad_line_is_reported_without_key_material() -> None:
    text = f"k1\nk2 {HEX_KEY} extra\nk3 not-a-key!\nbad/id {HEX_KEY}\nk5 {HEX_KEY}\n"
    with pytest.raises(ConfigError) as caught:
        parse_key_file(text, where="cluster.key")
    lines = [str(issue) for issue in caught.value.issues]
    assert lines == [
        "cluster.key: line 1: has 1 fields; expected `<key-id> <key in hex or base64>`",
        "cluster.key: line 2: has 3 fields; expected `<key-id> <key in hex or base64>`",
        "cluster.key: line 3: the key of 'k3' is neither hex nor base64; generate one with "
        "`lifekit keygen` or `openssl rand -hex 32`",
        "cluster.key: line 4: invalid key id 'bad/id': expected 1 to 32 characters: letters, "
        "digits, '.', '_', '-', not starting with a symbol",
    ]
    assert HEX_KEY not in str(caught.value)


def test_the_example_of_the_reference_page_loads() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "cluster-wire.md").read_text()
    (example,) = re.findall(r"^## Key file\n\n```\n(.*?)```", page, flags=re.MULTILINE | re.DOTALL)
    ring = parse_key_file(example)
    assert [key.id for key in ring.keys] == ["key-2024b", "key-2023"]
    assert [len(key.secret) for key in ring.keys] == [32, 32]


def test_non_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    path.write_bytes(b"k1 \xff\xfe\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_key_file(path)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    # A permissive umask must not leak into the new file's mode.
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask_zero")
def test_generate_writes_a_private_file_that_loads(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    ring = generate_key_file(path)
    assert path.stat().st_mode & 0o777 == KEY_FILE_MODE
    assert load_key_file(path) == ring
    assert len(ring.signing.secret) == 32
    assert ring.signing.id.startswith("key-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.key"]


def test_generate_refuses_to_replace_a_key_file(key_file: Path) -> None:
    before = key_file.read_text()
    with pytest.raises(ConfigError, match="already exists"):
        generate_key_file(key_file)
    assert key_file.read_text() == before
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["cluster.key"]
    ring = generate_key_file(key_file, key_id="k2", overwrite=True)
    assert load_key_file(key_file) == ring
    assert ring.signing.id == "k2"


def test_generate_reports_an_unwritable_place(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be written"):
        generate_key_file(tmp_path / "missing-dir" / "cluster.key")


def test_generated_keys_differ() -> None:
    lines = {new_key_line() for _ in range(20)}
    assert len(lines) == 20
    assert new_key_line(key_id="next").startswith("next ")


def test_rotation_through_key_files(tmp_path: Path) -> None:
    """The documented rotation, with the key files of two nodes one step apart."""
    first = tmp_path / "a.key"
    generate_key_file(first, key_id="old")
    second = tmp_path / "b.key"
    second.write_text(first.read_text())
    second.chmod(0o600)
    old_line = next(line for line in first.read_text().splitlines() if line.startswith("old "))
    new_line = new_key_line(key_id="new")

    def node(path: Path, name: str) -> tuple[Sealer, Opener]:
        ring = load_key_file(path)
        return (
            Sealer(ring, cluster="c", node=name, epoch=1),
            Opener(ring, cluster="c", node=name),
        )

    for text in (f"{old_line}\n{new_line}\n", f"{new_line}\n{old_line}\n", f"{new_line}\n"):
        for path in (first, second):
            write(path, text)
            (seal_a, open_a), (seal_b, open_b) = node(first, "a"), node(second, "b")
            assert isinstance(open_b.open(seal_a.seal(MessageType.HEARTBEAT, b"")), Message)
            assert isinstance(open_a.open(seal_b.seal(MessageType.HEARTBEAT, b"")), Message)
