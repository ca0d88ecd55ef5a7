"""Bad parameters are refused up front: by the kit's schema and validate, and by
``lifekit check`` run as a real subprocess, naming the tag, parameter, value and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lifekit_fs import FsKit

from lifekit.errors import ConfigError
from lifekit.kit import Resource

GOOD = {"device": "/dev/sdb1", "mount_point": "/srv/data", "fstype": "ext4"}


def _validate(**changes: Any) -> dict[str, Any]:
    kit = FsKit()
    params = {**GOOD, **changes}
    return dict(kit.validate("data", kit.schema.validate("data", params)))


def test_good_parameters_get_their_defaults() -> None:
    params = _validate(options=["noatime,nodev"])
    assert params["fsck"] == "auto"
    assert params["check_depth"] == "mounted"
    assert params["signals"] == ["TERM", "KILL"]
    assert FsKit.device_of(Resource("data", "fs", params)) == "/dev/sdb1"
    assert _validate(device="UUID=1b2c-33", fstype="xfs")["device"] == "UUID=1b2c-33"
    assert _validate(device="scratch", fstype="tmpfs")["fstype"] == "tmpfs"


@pytest.mark.parametrize(
    ("changes", "param", "shown"),
    [
        ({"mount_point": "srv/data"}, "mount_point", "not relative"),
        ({"mount_point": "/"}, "mount_point", "system directory"),
        ({"mount_point": "/usr"}, "mount_point", "system directory"),
        ({"mount_point": "/proc/x"}, "mount_point", "system directory"),
        ({"mount_point": "/srv/../etc"}, "mount_point", "normalized"),
        ({"fstype": "zfs"}, "fstype", "'ext4'"),
        ({"options": ["ro", "rw"]}, "options", "'ro' and 'rw'"),
        ({"options": ["sync,async"]}, "options", "'sync' and 'async'"),
        ({"options": ["data=ordered", "data=writeback"]}, "options", "contradict"),
        ({"options": ["remount"]}, "options", "remount"),
        ({"device": "sdb1"}, "device", "tmpfs"),
        ({"device": "dev/sdb1"}, "device", "absolute"),
        ({"capacity_warn": 99, "capacity_error": 90}, "capacity_warn", "capacity_error"),
        ({"capacity_warn": 101}, "capacity_warn", "percentage"),
        ({"signals": ["TERM", "NOPE"]}, "signals", "'NOPE'"),
        ({"probe_timeout": 0}, "probe_timeout", "> 0"),
        ({"options": ["ro"], "check_depth": "write"}, "check_depth", "read-only"),
    ],
)
def test_bad_parameters_name_the_parameter_value_and_fix(
    changes: dict[str, Any], param: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _validate(**changes)
    text = str(caught.value)
    assert "'data'" in text
    assert param in text
    assert shown in text


def _lifekit_check(config: Path) -> str:
    """Run ``lifekit check`` on ``config``; it must refuse it. Return what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "lifekit", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0, done
    return done.stdout + done.stderr


BAD_TOML = """
config_version = 1
[node]
name = "n1"
[cluster]
nodes = ["n1", "n2"]
[resources.relative]
kind = "fs"
params = { device = "/dev/sdb1", mount_point = "data", fstype = "ext4" }
[resources.system]
kind = "fs"
params = { device = "/dev/sdc1", mount_point = "/etc", fstype = "ext4" }
[resources.unknown]
kind = "fs"
params = { device = "/dev/sdd1", mount_point = "/srv/u", fstype = "zfs" }
[resources.contradictory]
kind = "fs"
params = { device = "/dev/sde1", mount_point = "/srv/c", fstype = "ext4", options = ["ro,rw"] }
"""


def test_lifekit_check_rejects_bad_fs_resources(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(BAD_TOML)
    output = _lifekit_check(config)
    for tag, param, value, expected in [
        ("relative", "mount_point", "'data'", "absolute directory path"),
        ("system", "mount_point", "'/etc'", "system directory"),
        ("unknown", "fstype", "'zfs'", "'ext4'"),
        ("contradictory", "options", "'ro,rw'", "'ro' and 'rw' are both given"),
    ]:
        lines = [line for line in output.splitlines() if f"resources.{tag}.params.{param}" in line]
        assert lines, (tag, output)
        assert value in lines[0], lines
        assert expected in lines[0], lines


def test_lifekit_check_runs_the_kits_cross_field_rules(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(
        'config_version = 1\n[node]\nname = "n1"\n[cluster]\nnodes = ["n1"]\n'
        '[resources.full]\nkind = "fs"\n'
        'params = { device = "/dev/sdb1", mount_point = "/srv/f", fstype = "ext4", '
        "capacity_warn = 99, capacity_error = 90 }\n"
    )
    output = _lifekit_check(config)
    assert "resources.full.params.capacity_warn" in output, output
    assert "99" in output
    assert "at or below capacity_error (90)" in output
