"""The ip kit's parameters: every bad value is refused up front, naming the tag, the parameter,
the value and what would be valid; ``lifekit check`` (the real CLI) shows them all at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lifekit_ip import IpKit

from lifekit.errors import ConfigError

KIT = IpKit()


def _check(params: dict[str, Any]) -> dict[str, Any]:
    return dict(KIT.validate("vip", KIT.schema.validate("vip", params)))


@pytest.mark.parametrize(
    ("params", "param", "expected"),
    [
        ({"address": "10.88.1.300/24"}, "address", "prefix length"),
        ({"address": "10.88.1.50"}, "address", "prefix length"),
        ({"address": "10.88.1.50/33"}, "address", "prefix length"),
        ({"address": "10.88.1.50/255.255.255.0"}, "address", "prefix length"),
        ({"address": "10.88.1.0/24"}, "address", "network address"),
        ({"address": "10.88.1.255/24"}, "address", "broadcast address"),
        ({"address": "224.0.0.5/24"}, "address", "unicast"),
        ({"address": "fe80::5/64"}, "address", "link-local"),
        ({"address": "fd00::5/129"}, "address", "prefix length"),
        ({"address": "10.88.1.50/24", "interface": "eth 0"}, "interface", "interface name"),
        ({"address": "10.88.1.50/24", "interface": "a" * 128}, "interface", "interface name"),
        ({"address": "10.88.1.50/24", "label": "vip"}, "label", "'<interface>:<suffix>'"),
        ({"address": "10.88.1.50/24", "label": "eth0:muchtoolong"}, "label", "15 characters"),
        ({"address": "fd00::5/64", "label": "eth0:v"}, "label", "IPv4 addresses only"),
        (
            {"address": "10.88.1.50/24", "interface": "eth0", "label": "eth1:v"},
            "label",
            "'eth0:<suffix>'",
        ),
        ({"address": "10.88.1.50/24", "dad": "maybe"}, "dad", "one of 'wait', 'skip'"),
        ({"address": "10.88.1.50/24", "announce_count": -1}, "announce_count", "0 (none)"),
        ({"address": "10.88.1.50/24", "announce_interval": 0}, "announce_interval", "> 0"),
        ({"address": "10.88.1.50/24", "reannounce_interval": -5}, "reannounce_interval", "0 (off)"),
        ({"address": "10.88.1.50/24", "ping_list": ["10.88.1.1/24"]}, "ping_list", "IP addresses"),
        ({"address": "10.88.1.50/24", "ping_list": ["fd00::1"]}, "ping_list", "same family"),
        ({"address": "10.88.1.50/24", "ping_timeout": 30}, "ping_timeout", "<= 10"),
        (
            {"address": "10.88.1.50/24", "interface": "eth0", "backup_interfaces": ["eth0"]},
            "backup_interfaces",
            "other than",
        ),
        (
            {"address": "10.88.1.50/24", "backup_interfaces": ["a", "a"]},
            "backup_interfaces",
            "once",
        ),
        ({"address": "10.88.1.50/24", "adress": "x"}, "adress", "did you mean 'address'"),
    ],
)
def test_bad_values_are_refused_with_the_parameter_value_and_fix(
    params: dict[str, Any], param: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _check(params)
    [issue] = caught.value.issues
    assert "'vip'" in issue.where
    assert param in issue.where
    assert expected in str(issue)
    if param in params and param != "adress":
        assert issue.value == params[param]


def test_good_values_are_accepted_and_the_address_is_canonical() -> None:
    checked = _check({"address": "fd00:0:0::50/64", "backup_interfaces": ["eth1"], "dad": "skip"})
    assert checked["address"] == "fd00::50/64"
    assert checked["announce_count"] == 2
    checked = _check(
        {
            "address": "10.88.1.50/24",
            "interface": "bond0.100",
            "label": "bond0.100:v",
            "ping_list": ["10.88.1.1"],
        }
    )
    assert checked["address"] == "10.88.1.50/24"
    assert _check({"address": "10.88.1.50/32"})["address"] == "10.88.1.50/32"
    assert _check({"address": "10.88.1.51/31"})["address"] == "10.88.1.51/31"


BAD = """\
config_version = 1
[node]
name = "n1"
[resources.vip1]
kind = "ip"
params = { address = "10.88.1.300/24" }
[resources.vip2]
kind = "ip"
params = { address = "fd00::50/64", label = "eth0:v" }
[resources.vip3]
kind = "ip"
params = { address = "10.88.1.52/24", interface = "eth0", label = "eth0:waytoolonglabel" }
[resources.vip4]
kind = "ip"
params = { address = "10.88.1.53/24", dad = "maybe" }
[resources.vip5]
kind = "ip"
params = { address = "10.88.1.54/24", interface = "eth/0" }
[resources.vip6]
kind = "ip"
params = { address = "10.88.1.55/24", backup_interfaces = "eth1" }
"""


def _lifekit_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "lifekit", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lifekit_check_rejects_bad_ip_resources_naming_each(tmp_path: Path) -> None:
    done = _lifekit_check(tmp_path, BAD)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    for line in (
        "resources.vip1.params.address: invalid value (got '10.88.1.300/24'); expected an "
        "address with its prefix length",
        "resources.vip2.params.label: invalid value (got 'eth0:v'); labels exist for IPv4 "
        "addresses only",
        "resources.vip3.params.label: invalid value (got 'eth0:waytoolonglabel'); expected "
        "'<interface>:<suffix>' of at most 15 characters",
        "resources.vip4.params.dad: invalid value (got 'maybe'); expected one of 'wait', 'skip'",
        "resources.vip5.params.interface: invalid value (got 'eth/0'); expected an interface name",
        "resources.vip6.params.backup_interfaces: invalid value (got 'eth1'); expected a list",
    ):
        assert line in out, out


def test_lifekit_check_accepts_good_ip_resources_and_refuses_a_shared_address(
    tmp_path: Path,
) -> None:
    good = (
        'config_version = 1\n[node]\nname = "n1"\n'
        '[resources.a]\nkind = "ip"\nparams = { address = "10.88.1.50/24", interface = "eth0", '
        'label = "eth0:a", backup_interfaces = ["eth1"], reannounce_interval = 60.0 }\n'
        '[resources.b]\nkind = "ip"\nparams = { address = "fd00::50/64", dad = "skip" }\n'
    )
    done = _lifekit_check(tmp_path, good)
    assert done.returncode == 0, done.stdout + done.stderr
    shared = good.replace("fd00::50/64", "10.88.1.50/24")
    done = _lifekit_check(tmp_path, shared)
    assert done.returncode != 0
    assert "must be unique among 'ip' resources" in done.stdout + done.stderr
