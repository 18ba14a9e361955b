"""qemu/harness.py's reading of the guest console: a wait that runs out after the guest's
kernel reported a stall is a GuestStalled (the one error a VM test is run again for), any other
is a plain VMError; and the error shows the console's landmarks, not only its last lines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from qemu.harness import VM, GuestStalled, VMConfig, VMError

BOOT = "[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org)\n"
REBOOT = ("2026-11-27 10:45:29,347 core0-init[1] WARNING core0.init: SIGINT: reboot requested\n"
          "[   14.367556] reboot: Restarting system\n")
LOCKUP = "[  287.3] watchdog: BUG: soft lockup - CPU#0 stuck for 23s! [python3.11:88]\n"
RCU = "[  301.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
EXPEDITED = "[  301.2] rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: {\n"
SELF = "[  301.3] rcu: INFO: rcu_preempt self-detected stall on CPU\n"
NOISE = "".join(f"[  287.{i}]  ? exit_to_user_mode_prepare+0x44/0x240\n" for i in range(200))


def vm_with_console(tmp_path: Path, text: str) -> VM:
    log = tmp_path / "serial.log"
    log.write_text(text)
    return VM(VMConfig(serial_log=log))


def test_a_quiet_console_gives_a_plain_error(tmp_path: Path) -> None:
    vm = vm_with_console(tmp_path, BOOT + REBOOT + BOOT + NOISE)
    err = vm.timed_out("core.ping did not answer within 5s")
    assert type(err) is VMError and vm.stall() is None
    text = str(err)
    # the boots and the reboot are shown though 200 lines of noise came after them
    assert text.count("Linux version") == 2 and "reboot requested" in text
    assert "Restarting system" in text


def test_a_soft_lockup_or_rcu_stall_gives_guest_stalled(tmp_path: Path) -> None:
    for report in (LOCKUP, RCU, EXPEDITED, SELF):
        vm = vm_with_console(tmp_path, BOOT + REBOOT + BOOT + report + NOISE)
        err = vm.timed_out("the node did not come back")
        assert isinstance(err, GuestStalled), report
        assert vm.stall() == report.strip()
        assert report.strip() in str(err).splitlines()[0]


def test_a_vm_test_is_run_again_only_for_a_stall(tmp_path: Path) -> None:
    """The marker the VM tests carry: one more run after GuestStalled, none after VMError."""
    (tmp_path / "test_x.py").write_text(textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import pytest
        sys.path.insert(0, {str(ROOT)!r})
        from qemu.harness import GuestStalled, VMError

        RUNS = Path(__file__).with_name("runs")

        @pytest.mark.flaky(reruns=1, only_rerun=[GuestStalled])
        @pytest.mark.parametrize("kind", ["stall", "other"])
        def test_fails(kind):
            with RUNS.open("a") as f:
                f.write(kind + "\\n")
            raise (GuestStalled if kind == "stall" else VMError)(kind)
    """))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", "test_x.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    runs = (tmp_path / "runs").read_text().split()
    assert sorted(runs) == ["other", "stall", "stall"], (runs, res.stdout)
