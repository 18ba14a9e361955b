"""``core0 tls``: a CA, a server certificate for the node's Redis, client certificates.

Made with the ``openssl`` command (argv lists, no shell): it is on every host that builds or
drives nodes, needs no Python dependency in core0 or the image, and its output is the standard
PEM that redis-server, redis-py and 0-core's clients load. Keys are EC P-256, written with mode
0600; certificates carry ``subjectAltName`` (names and addresses the node is reached by) and
the right ``extendedKeyUsage`` (serverAuth / clientAuth).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

CA_DAYS = 3650
CERT_DAYS = 825


class TlsError(RuntimeError):
    """openssl is missing or failed; the message has its error output."""


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise TlsError("the openssl command is needed (Debian: apt-get install openssl)")
    return path


def _run(args: list[str]) -> None:
    p = subprocess.run([_openssl(), *args], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise TlsError(f"openssl {args[0]} failed: {p.stderr.strip()[-500:]}")


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _subject_cn(name: str) -> str:
    if not name or any(c in name for c in "/\\=,+\n\r\0") or len(name) > 64:
        raise TlsError(f"invalid certificate name {name!r}")
    return f"/CN={name}"


def _key_and_csr(key: Path, csr: Path, cn: str) -> None:
    _run(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", _subject_cn(cn)])


def _sign(d: Path, csr: Path, out: Path, ext: str, days: int) -> None:
    extfile = d / f".{out.name}.ext"
    extfile.write_text(ext)
    try:
        _run(["x509", "-req", "-in", str(csr), "-CA", str(d / "ca.crt"), "-CAkey",
              str(d / "ca.key"), "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(days),
              "-sha256", "-out", str(out), "-extfile", str(extfile)])
    finally:
        extfile.unlink(missing_ok=True)
        csr.unlink(missing_ok=True)


def san(names: list[str]) -> str:
    """subjectAltName value: IP addresses as IP:, everything else as DNS:."""
    parts = []
    for n in names:
        try:
            parts.append(f"IP:{ipaddress.ip_address(n)}")
        except ValueError:
            if not n or any(c in n for c in ", \n\r\0/"):
                raise TlsError(f"invalid host name {n!r}") from None
            parts.append(f"DNS:{n}")
    return ",".join(parts)


def init(d: Path, names: list[str], *, force: bool = False, days: int = CERT_DAYS) -> list[Path]:
    """Make ``ca.{crt,key}`` and ``server.{crt,key}`` in ``d`` (0700); the server certificate
    is valid for ``names`` (host names and IP addresses) plus localhost and 127.0.0.1."""
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    files = [d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key"]
    if not force and any(f.exists() for f in files):
        raise TlsError(f"{d} already has TLS material (--force replaces it)")
    all_names = list(dict.fromkeys([*names, "localhost", "127.0.0.1", "::1"]))
    with _private_umask():
        _run(["req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
              "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(d / "ca.key"),
              "-out", str(d / "ca.crt"), "-days", str(CA_DAYS), "-sha256",
              "-subj", _subject_cn("core0 CA"),
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        _key_and_csr(d / "server.key", d / "server.csr", all_names[0])
        _sign(d, d / "server.csr", d / "server.crt",
              "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
              f"extendedKeyUsage=serverAuth\nsubjectAltName={san(all_names)}\n", days)
    for f in (d / "ca.crt", d / "server.crt"):
        os.chmod(f, 0o644)
    return files


def client(d: Path, name: str, *, force: bool = False, days: int = CERT_DAYS) -> list[Path]:
    """A client certificate ``client-<name>.{crt,key}`` signed by the CA in ``d``."""
    if not (d / "ca.key").exists():
        raise TlsError(f"no CA in {d}: run `core0 tls init --dir {d}` first")
    crt, key = d / f"client-{name}.crt", d / f"client-{name}.key"
    if not force and (crt.exists() or key.exists()):
        raise TlsError(f"{crt} exists (--force replaces it)")
    with _private_umask():
        _key_and_csr(key, d / f"client-{name}.csr", name)
        _sign(d, d / f"client-{name}.csr", crt,
              "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
              "extendedKeyUsage=clientAuth\n", days)
    os.chmod(crt, 0o644)
    return [crt, key]
