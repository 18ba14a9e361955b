"""A container's os-release(5), parsed with shell quoting rules (core0.sandbox.info)."""

from __future__ import annotations

from core0.sandbox.info import parse_os_release

TEXT = """\
# a comment
NAME="Alpine Linux"
ID=alpine
VERSION_ID='3.19.1'
PRETTY_NAME="Debian \\"bookworm\\" = 12"
ID_LIKE=debian # the rest of the line is a comment
BROKEN="no closing quote
not an assignment
TWO=words here
=novalue
"""


def test_quotes_escapes_and_comments() -> None:
    assert parse_os_release(TEXT) == {
        "NAME": "Alpine Linux", "ID": "alpine", "VERSION_ID": "3.19.1",
        "PRETTY_NAME": 'Debian "bookworm" = 12', "ID_LIKE": "debian",
    }


def test_empty_and_binary_garbage() -> None:
    assert parse_os_release("") == {}
    assert parse_os_release("\x00\x01=\n'") == {}
