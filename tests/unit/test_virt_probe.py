"""core0.virt.probe's pure decision: which domain type without a boot, and when a probe boot
must tell (the boot itself runs against a real libvirtd in tests/integration/test_kvm.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from core0.virt import probe

KVM_CAPS = "<capabilities><guest><arch name='x86_64'><domain type='qemu'/>" \
           "<domain type='kvm'/></arch></guest></capabilities>"
TCG_CAPS = "<capabilities><guest><arch name='x86_64'><domain type='qemu'/></arch></guest>" \
           "</capabilities>"


@pytest.mark.parametrize("mode", ["qemu", "kvm"])
def test_forced_mode_wins(mode: str) -> None:
    got, why = probe.decide(mode, "", False, None)
    assert got == mode and mode in why


def test_no_kvm_in_capabilities_is_tcg(tmp_path: Path) -> None:
    assert probe.decide("auto", TCG_CAPS, True, tmp_path) == (
        "qemu", "libvirt's capabilities offer no kvm domain")


def test_dead_dev_kvm_is_tcg(tmp_path: Path) -> None:
    got, why = probe.decide("auto", KVM_CAPS, False, tmp_path)
    assert got == "qemu" and "/dev/kvm" in why


def test_double_quoted_caps_count(tmp_path: Path) -> None:
    caps = KVM_CAPS.replace("'", '"')
    assert probe.decide("auto", caps, True, tmp_path)[0] is None


def test_no_probe_kernel_is_tcg() -> None:
    got, why = probe.decide("auto", KVM_CAPS, True, None)
    assert got == "qemu" and "probe kernel" in why


def test_everything_offered_needs_a_boot(tmp_path: Path) -> None:
    assert probe.decide("auto", KVM_CAPS, True, tmp_path) == (None, "probe boot")


def test_boot_reason_names_the_outcome(tmp_path: Path) -> None:
    k = tmp_path / "vmlinuz"
    assert "panicked as expected" in probe.boot_reason(True, k, 15)
    bad = probe.boot_reason(False, k, 15)
    assert "did not reach" in bad and "15s" in bad and str(k) in bad


def test_probe_kernel_lookup(tmp_path: Path) -> None:
    k = tmp_path / "vmlinuz"
    assert probe.probe_kernel(str(k)) is None
    k.write_bytes(b"x")
    assert probe.probe_kernel(str(k)) == k


def test_forced_mode_recorded_without_libvirt(tmp_path: Path) -> None:
    """A forced mode never asks libvirt (``conn`` unused) and records why."""
    got = asyncio.run(probe.domain_type(None, "qemu", "", tmp_path))  # type: ignore[arg-type]
    assert got == "qemu"
    rec = json.loads((tmp_path / "probe.json").read_text())
    assert rec["type"] == "qemu" and rec["reason"] == "virt.domain_type is qemu"
