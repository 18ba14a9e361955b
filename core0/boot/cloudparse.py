"""cloud-config parsing: user-data and network-config documents, write_files fields.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from core0.errors import BadRequest, TooLarge
from core0.schema import SAFE_TEXT, Schema

if TYPE_CHECKING:
    pass


#: largest decoded file
MAX_FILE = 64 << 20


# ---------------------------------------------------------------- parsing


def parse(text: str) -> dict[str, Any]:
    """``#cloud-config`` YAML or a JSON object → dict (BadRequest otherwise)."""
    body = text.lstrip("\ufeff").strip()
    if body.startswith("{"):
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise BadRequest(f"user-data: bad JSON: {e}") from None
    elif body.startswith("#cloud-config"):
        from core0.boot import safeyaml  # PyYAML: loaded when user-data is read, not at start

        try:
            doc = safeyaml.loads(body)
        except safeyaml.YAMLError as e:
            raise BadRequest(f"user-data: {e}") from None
    elif body.startswith("#!"):
        raise BadRequest("user-data: scripts are not supported (use runcmd)")
    elif not body:
        doc = {}
    else:
        raise BadRequest("user-data: neither '#cloud-config' YAML nor a JSON object")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise BadRequest("user-data: the document must be a mapping")
    return doc


def parse_network(text: str) -> dict[str, Any] | None:
    """A config drive's network-config (YAML or JSON, optionally under ``network:``)."""
    body = text.strip()
    if not body:
        return None
    from core0.boot import safeyaml

    try:
        doc = json.loads(body) if body.startswith("{") else safeyaml.loads(body)
    except ValueError as e:  # safeyaml.YAMLError included
        raise BadRequest(f"network-config: {e}") from None
    if isinstance(doc, dict) and isinstance(doc.get("network"), dict):
        doc = doc["network"]
    return doc if isinstance(doc, dict) else None


# ---------------------------------------------------------------- files


@dataclass(frozen=True)
class WriteFile(Schema):
    """One ``write_files`` entry (cloud-init's keys; ``defer`` is accepted and ignored).
    ``content`` may be a YAML scalar that is not a string (``content: 1``): it is written as
    text, as cloud-init does."""

    __unknown__ = "key"

    path: Annotated[str, SAFE_TEXT]
    content: str | int | float | bool | None = None
    encoding: str | None = None
    permissions: int | str | None = None
    owner: str | None = None
    append: bool = False
    defer: bool = False


def write_file(entry: Any, where: str) -> WriteFile:
    """Check one ``write_files`` entry (BadRequest naming the key)."""
    wf = WriteFile.parse(entry, where)
    if not wf.path.startswith("/"):
        raise BadRequest(f"{where}.path: an absolute path is required", field=f"{where}.path")
    return wf


def decode_content(content: Any, encoding: str) -> bytes:
    enc = (encoding or "text").lower()
    if not isinstance(content, str):
        if content is None:
            content = ""
        elif isinstance(content, (int, float, bool)):
            content = str(content)
        else:
            raise BadRequest("content: expected a string")
    if enc in ("text", "text/plain", ""):
        return content.encode()
    try:
        if enc in ("b64", "base64"):
            return base64.b64decode(content, validate=False)
        if enc in ("gz", "gzip", "gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
            raw = base64.b64decode(content, validate=False)
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = d.decompress(raw, MAX_FILE)
            if d.unconsumed_tail:
                raise TooLarge(f"content: more than {MAX_FILE} bytes once decompressed")
            return data
    except (binascii.Error, zlib.error, gzip.BadGzipFile) as e:
        raise BadRequest(f"content: cannot decode {enc}: {e}") from None
    raise BadRequest(f"encoding {encoding!r}: expected text, b64, base64 or gz+b64")


def parse_mode(value: Any, default: int = 0o644) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadRequest("permissions: expected an octal string such as '0644'")
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"(0o|0)?[0-7]{1,4}", value.strip()):
        mode = int(value.strip().removeprefix("0o"), 8)
    else:
        raise BadRequest(f"permissions {value!r}: expected an octal string such as '0644'")
    if not 0 <= mode <= 0o7777:
        raise BadRequest(f"permissions {value!r}: out of range")
    return mode


def parse_owner(value: Any) -> tuple[int, int] | None:
    if value is None or value == "":
        return None
    import grp
    import pwd

    if not isinstance(value, str):
        raise BadRequest("owner: expected 'user[:group]'")
    user, _, group = value.partition(":")
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        uid, gid = pw.pw_uid, pw.pw_gid
        if group:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
    except KeyError:
        raise BadRequest(f"owner {value!r}: no such user or group") from None
    return uid, gid
