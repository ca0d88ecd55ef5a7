"""The cluster key file: loading it only when nobody else can read or change it, and making one.

The file holds one key per line, ``<key-id> <key>``, the key in hex or base64 and at least 32
bytes long; ``#`` starts a comment. The first key signs, every key verifies, which is what
lets keys rotate without downtime (see :class:`~lifekit._cluster._wire.KeyRing`). The format
and the rotation steps are documented in ``docs/cluster-wire.md``.

Errors never show key material: they name the file, the line and what is wrong with it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import pwd
import re
import secrets
import stat
from pathlib import Path
from typing import Final

from lifekit._cluster._wire import Key, KeyRing
from lifekit.errors import ConfigError, ConfigIssue

__all__ = [
    "KEY_FILE_MODE",
    "MAX_KEY_FILE_BYTES",
    "generate_key_file",
    "load_key_file",
    "new_key_line",
    "parse_key_file",
]

#: The mode :func:`generate_key_file` gives the file; :func:`load_key_file` refuses any mode
#: that lets the group or others in.
KEY_FILE_MODE: Final = 0o600

#: A key file longer than this is refused unread (it is not a key file).
MAX_KEY_FILE_BYTES: Final = 64 * 1024

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_SECRET_BYTES = 32


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def load_key_file(path: str | os.PathLike[str]) -> KeyRing:
    """Read the key ring from ``path``, refusing a file others could read or replace.

    Refused: a symlink; anything but a regular file; a file the group or others may access
    in any way; a file owned by someone other than the running user or root; an empty file;
    a malformed line; a key shorter than 32 bytes; a key id used twice.

    :raises ConfigError: naming the path, what was found and the fix (e.g. ``chmod 600``).
    """
    where = os.fspath(path)
    try:
        # O_NOFOLLOW: whoever controls a link controls the key; O_NONBLOCK: a FIFO planted
        # there must not hang the daemon (the regular-file check then refuses it).
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError([_open_issue(where, exc)]) from exc
    try:
        info = os.fstat(fd)
        _check_file(where, info)
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(
            [
                ConfigIssue(
                    where,
                    f"larger than {MAX_KEY_FILE_BYTES} bytes: not a key file",
                    expected="point the configuration at the cluster key file",
                )
            ]
        )
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigIssue(where, "not UTF-8 text", expected="write keys in hex or base64")]
        ) from exc
    return parse_key_file(text, where=where)


def _open_issue(where: str, exc: OSError) -> ConfigIssue:
    if exc.errno == errno.ELOOP:
        target = os.path.realpath(where)
        return ConfigIssue(
            where,
            f"is a symbolic link (to {target}); a key file must be the file itself",
            expected=f"point the configuration at {target}, or replace the link with the file",
        )
    if isinstance(exc, FileNotFoundError):
        return ConfigIssue(
            where,
            "no such key file",
            expected=f"create one with `lifekit keygen {where}` and copy it to every node",
        )
    return ConfigIssue(where, f"cannot be read: {exc.strerror}", expected="check its path")


def _check_file(where: str, info: os.stat_result) -> None:
    issues = []
    if not stat.S_ISREG(info.st_mode):
        issues.append(ConfigIssue(where, "is not a regular file"))
    owner = info.st_uid
    me = os.geteuid()
    if owner not in (me, 0):
        issues.append(
            ConfigIssue(
                where,
                f"is owned by {_user_name(owner)} (uid {owner}), not by "
                f"{_user_name(me)} (uid {me}) or root",
                expected=f"run `chown {_user_name(me)} {where}`",
            )
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        issues.append(
            ConfigIssue(
                where,
                f"has mode {mode:04o}: the group or others can access the cluster key",
                expected=f"run `chmod 600 {where}` (and rotate the key if others read it)",
            )
        )
    if issues:
        raise ConfigError(issues)


def parse_key_file(text: str, *, where: str = "key file") -> KeyRing:
    """The key ring written in ``text`` (a key file's content), every problem reported at once.

    :param where: the file's name, for the messages.
    :raises ConfigError: a line is malformed, a key too short, an id used twice, or no key.
    """
    issues = []
    keys: list[Key] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        at = f"{where}: line {number}"
        fields = content.split()
        if len(fields) != 2:
            # The line is not shown: it may hold a key.
            issues.append(
                ConfigIssue(
                    at,
                    f"has {len(fields)} fields",
                    expected="expected `<key-id> <key in hex or base64>`",
                )
            )
            continue
        key_id, encoded = fields
        secret = _decode(encoded)
        if secret is None:
            issues.append(
                ConfigIssue(
                    at,
                    f"the key of {key_id!r} is neither hex nor base64",
                    expected="generate one with `lifekit keygen` or `openssl rand -hex 32`",
                )
            )
            continue
        if key_id in first_line:
            issues.append(
                ConfigIssue(
                    at,
                    f"key id {key_id!r} is already used on line {first_line[key_id]}",
                    expected="give each key its own id",
                )
            )
            continue
        try:
            key = Key(key_id, secret)
        except ValueError as exc:
            issues.append(ConfigIssue(at, str(exc)))
            continue
        first_line[key_id] = number
        keys.append(key)
    if not keys and not issues:
        issues.append(
            ConfigIssue(
                where,
                "holds no key",
                expected=f"add a line `<key-id> <key>`, e.g. with `lifekit keygen {where}`",
            )
        )
    if issues:
        raise ConfigError(issues)
    return KeyRing(keys)


def _decode(encoded: str) -> bytes | None:
    # Hex first: a hex string is also valid base64, and `openssl rand -hex` is the common
    # way to make a key. A random base64 key is all hex digits with negligible probability.
    if _HEX.fullmatch(encoded):
        return bytes.fromhex(encoded)
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return None


def new_key_line(*, key_id: str | None = None) -> str:
    """A new key file line with a fresh random key (the line to add in a key rotation).

    :param key_id: the key's id; by default ``key-`` and 8 random hex digits.
    """
    if key_id is None:
        key_id = f"key-{secrets.token_hex(4)}"
    key = Key(key_id, secrets.token_bytes(_SECRET_BYTES))
    return f"{key.id} {key.secret.hex()}"


def generate_key_file(
    path: str | os.PathLike[str], *, key_id: str | None = None, overwrite: bool = False
) -> KeyRing:
    """Write a new key file holding one random key, atomically, with mode 0600.

    The file appears complete or not at all (written aside, synced, then linked into place).
    Copy it to every node, keeping its mode.

    :param key_id: the key's id; by default ``key-`` and 8 random hex digits.
    :param overwrite: replace an existing file (which breaks the cluster until every node has
        the new key: to change keys of a running cluster, rotate them instead).
    :raises ConfigError: the file exists and ``overwrite`` is false, or it cannot be written.
    """
    target = Path(path)
    line = new_key_line(key_id=key_id)
    content = (
        "# lifekit cluster key file: `<key-id> <key>` per line; the first key signs, all verify.\n"
        "# Keep it mode 0600. Rotate: add a new line, then move it first, then remove the old\n"
        "# line, each step on every node before the next.\n"
        f"{line}\n"
    )
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(
            temporary,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            KEY_FILE_MODE,
        )
        try:
            # The umask may have taken bits off the creation mode; make it exactly 0600.
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, content.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temporary, target)
        else:
            # link() fails if the target exists, where rename() would replace it.
            os.link(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except FileExistsError as exc:
        raise ConfigError(
            [
                ConfigIssue(
                    str(target),
                    "already exists",
                    expected="keep it, remove it first, or rotate keys by adding a line from "
                    "`lifekit keygen --print`",
                )
            ]
        ) from exc
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(target), f"cannot be written: {exc.strerror}")]) from exc
    finally:
        temporary.unlink(missing_ok=True)
    return parse_key_file(content, where=str(target))
