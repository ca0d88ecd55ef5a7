"""A lab's lifecycle: nothing left after an error, Ctrl-C or a killed owner; several at once."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest

from lifekit.errors import LabError
from lifekit.lab import Lab, LabSpec, clean, leftovers

pytestmark = pytest.mark.root

SMALL = LabSpec(nodes=("n1", "n2"), networks=("public",), client=False, lun_size=8 << 20)


def unique() -> str:
    return "t" + secrets.token_hex(4)


def owner_script(name: str, ending: str) -> str:
    return textwrap.dedent(
        f"""
        import faulthandler, os, signal, sys, time
        from lifekit.lab import Lab, LabSpec
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        # As in a terminal: a shell running the suite in the background ignores SIGINT, and
        # Python would keep ignoring it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        spec = LabSpec(nodes=("n1", "n2"), networks=("public",), client=False, lun_size=8 << 20,
                       iscsi=True)
        with Lab(spec, name={name!r}) as lab:
            lab.node("n2").attach_fenced_disk()
            lab.node("n1").spawn(["sleep", "3600"])
            lab.node("n1").run(["mkdir", "-p", "/run/lun"])
            lab.node("n1").run(["mkfs.ext4", "-q", lab.node("n1").disk])
            lab.node("n1").run(["mount", lab.node("n1").disk, "/run/lun"])
            print("up", flush=True)
            {ending}
        """
    )


def start_owner(name: str, ending: str) -> subprocess.Popen[str]:
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_script(name, ending)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line == "up\n", owner.stderr.read() if owner.stderr else line
    return owner


def test_an_error_inside_the_lab_still_tears_it_down() -> None:
    name = unique()
    with pytest.raises(RuntimeError, match="boom"), Lab(SMALL, name=name) as lab:
        lab.node("n1").spawn(["sleep", "3600"])
        raise RuntimeError("boom")
    assert leftovers([f"lklab-{name}"]) == {}


def test_ctrl_c_tears_the_lab_down() -> None:
    name = unique()
    owner = start_owner(name, "time.sleep(3600)")
    try:
        assert f"lklab-{name}" in leftovers()
        owner.send_signal(signal.SIGINT)
        try:
            _out, err = owner.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            owner.send_signal(signal.SIGUSR1)  # where is it stuck?
            time.sleep(1)
            owner.kill()
            pytest.fail(f"the owner did not finish on SIGINT:\n{owner.communicate()[1]}")
        assert "KeyboardInterrupt" in err
        assert leftovers([f"lklab-{name}"]) == {}
    finally:
        owner.kill()
        owner.communicate()
        clean(names=[name])
    assert leftovers([f"lklab-{name}"]) == {}


def test_a_killed_owner_leaves_leftovers_that_clean_removes() -> None:
    name = unique()
    # The owner dies mid-lab on purpose: no __exit__, no teardown.
    owner = start_owner(name, "os.kill(os.getpid(), signal.SIGKILL)")
    try:
        assert owner.wait(timeout=30) == -signal.SIGKILL
        left = leftovers([f"lklab-{name}"])[f"lklab-{name}"]
        kinds = {entry.split()[0] for entry in left}
        assert {"netns", "cgroup", "process", "loop", "directory"} <= kinds
        # Both paths to the LUN (n1's plain loop, n2's fenced one) and the fenced path's and
        # the target's daemons are among them.
        loops = [entry for entry in left if entry.startswith("loop ")]
        assert any("lun.img" in entry for entry in loops)
        assert any("/fuse/" in entry for entry in loops)
        processes = " ".join(entry for entry in left if entry.startswith("process "))
        for daemon in ("tgtd", "nbdfuse", "nbdkit", "lifekit.lab._controller"):
            assert daemon in processes
        assert f"lklab-{name}" in clean()  # an orphan: its owner is dead
        assert leftovers([f"lklab-{name}"]) == {}
    finally:
        owner.kill()
        owner.communicate()
        clean(names=[name])
    assert leftovers([f"lklab-{name}"]) == {}


def test_several_labs_at_once(lifekit_lab_factory: Callable[..., Lab]) -> None:
    first = lifekit_lab_factory(SMALL)
    second = lifekit_lab_factory(SMALL)
    assert first.id != second.id
    for lab in (first, second):
        # Same addresses in both labs, each in its own isolated world.
        target = lab.node("n2").address("public")
        assert lab.node("n1").run(["ping", "-c1", "-W2", target]).returncode == 0
    first.down()
    assert leftovers([first.id]) == {}
    assert second.node("n1").run(["ping", "-c1", "-W2", "10.88.1.12"]).returncode == 0


def test_a_taken_name_and_a_bad_spec_are_refused() -> None:
    name = unique()
    with Lab(SMALL, name=name):
        with pytest.raises(LabError, match=f"a lab named '{name}' already exists"):
            Lab(SMALL, name=name).up()
    assert leftovers([f"lklab-{name}"]) == {}
    with pytest.raises(ValueError, match="invalid node name") as info:
        LabSpec(nodes=("n1", "Bad-Name"), networks=("public", "x" * 9))
    assert "'Bad-Name'" in str(info.value)
    assert "invalid network name" in str(info.value)
    for path in ("/..", "/etc/../x", "/run/x", "/proc/sys", "relative", "/dev/shm"):
        with pytest.raises(ValueError, match="invalid private directory"):
            LabSpec(private_dirs=(path,))
