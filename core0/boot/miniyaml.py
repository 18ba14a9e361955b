"""A small, safe YAML subset: enough for cloud-config user-data, no dependency.

Supported: block mappings and sequences (``- key: value`` items included), flow sequences and
mappings (``[a, "b"]``, ``{k: v}``), plain / single-quoted / double-quoted scalars (multi-line
plain and quoted scalars are folded), block scalars (``|``, ``>``, chomping ``-``/``+``, an
indentation digit), comments, a leading ``---`` and a final ``...``. Plain scalars resolve as
YAML 1.1 does for the cases cloud-config meets: null/~, true/false/yes/no/on/off, integers
(``0644`` is octal, as PyYAML reads it), floats; everything else is a string.

Refused with :class:`YAMLError` (line number included): anchors, aliases, tags, several
documents, complex keys, tabs in indentation, duplicate keys. Nothing is ever executed or
constructed beyond dict/list/str/int/float/bool/None.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["YAMLError", "loads"]


class YAMLError(ValueError):
    pass


_KEY = re.compile(r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'"""
                  r"""|[^\s#'"\[\]{},&*!|>%@`-][^#]*?|-[^\s#][^#]*?)\s*:(?=\s|$)""")
# YAML 1.1 resolvers, as PyYAML applies them (sexagesimal numbers left out)
_BOOL = {**dict.fromkeys(("yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
         **dict.fromkeys(("no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"),
                         False)}
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")
_OCT = re.compile(r"[-+]?0[0-7_]+")
_BIN = re.compile(r"[-+]?0b[01_]+")
_HEX = re.compile(r"[-+]?0x[0-9a-fA-F_]+")
_FLOAT = re.compile(r"[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?"
                    r"|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?")
_ESC = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v",
        "f": "\f", "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\",
        "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029"}


def plain_value(text: str) -> Any:
    t = text.strip()
    if t in ("", "~", "null", "Null", "NULL"):
        return None
    if t in _BOOL:
        return _BOOL[t]
    sign = -1 if t[:1] == "-" else 1
    digits = t.lstrip("+-").replace("_", "")
    if _BIN.fullmatch(t):
        return sign * int(digits[2:], 2)
    if _HEX.fullmatch(t):
        return sign * int(digits[2:], 16)
    if _OCT.fullmatch(t):
        return sign * int(digits, 8)
    if _INT.fullmatch(t):
        return sign * int(digits)
    if _FLOAT.fullmatch(t):
        return float(t.replace("_", ""))
    if t in (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"):
        return float("inf")
    if t in ("-.inf", "-.Inf", "-.INF"):
        return float("-inf")
    if t[0] in "&*!":
        raise YAMLError(f"anchors, aliases and tags are not supported: {t[:40]!r}")
    return t


def _strip_comment(text: str) -> str:
    """Remove a trailing comment from a plain (unquoted) piece of text."""
    m = re.search(r"(^|\s)#", text)
    return text[: m.start()].rstrip() if m else text.rstrip()


class _Parser:
    def __init__(self, text: str):
        if "\t" in text:
            for n, line in enumerate(text.splitlines(), 1):
                if line[: len(line) - len(line.lstrip())].find("\t") >= 0:
                    raise YAMLError(f"line {n}: tab in indentation")
        self.lines = text.splitlines()
        self.i = 0

    def err(self, msg: str, line: int | None = None) -> YAMLError:
        return YAMLError(f"line {(self.i if line is None else line) + 1}: {msg}")

    # ------------------------------------------------------------ lines

    @staticmethod
    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    def skip_blank(self) -> None:
        while self.i < len(self.lines):
            s = self.lines[self.i].strip()
            if s and not s.startswith("#"):
                return
            self.i += 1

    def peek(self) -> tuple[int, str] | None:
        self.skip_blank()
        if self.i >= len(self.lines):
            return None
        line = self.lines[self.i]
        return self.indent(line), line.strip()

    # ------------------------------------------------------------ document

    def document(self) -> Any:
        for n, line in enumerate(self.lines):
            if line.rstrip() in ("...", "---") and n > 0 and any(
                    x.strip() and not x.lstrip().startswith("#") for x in self.lines[:n]):
                rest = [x for x in self.lines[n + 1:]
                        if x.strip() and not x.lstrip().startswith("#")]
                if line.rstrip() == "---" or rest:
                    raise self.err("several documents are not supported", n)
                self.lines = self.lines[:n]
                break
        self.skip_blank()
        if self.i < len(self.lines) and self.lines[self.i].rstrip() == "---":
            self.i += 1
        if self.i < len(self.lines) and self.lines[self.i].startswith("--- "):
            self.lines[self.i] = "    " + self.lines[self.i][4:]
        value = self.node(0)
        self.skip_blank()
        if self.i < len(self.lines):
            line = self.lines[self.i].strip()
            if line == "...":
                return value
            if line == "---":
                raise self.err("several documents are not supported")
            raise self.err(f"unexpected content {line[:40]!r}")
        return value

    def node(self, min_indent: int) -> Any:
        p = self.peek()
        if p is None or p[0] < min_indent:
            return None
        ind, text = p
        if text == "-" or text.startswith("- "):
            return self.seq(ind)
        if _KEY.match(text):
            return self.mapping(ind)
        return self.scalar_lines(ind, text, min_indent)

    def seq(self, ind: int) -> list[Any]:
        out: list[Any] = []
        while True:
            p = self.peek()
            if p is None or p[0] != ind or not (p[1] == "-" or p[1].startswith("- ")):
                if p is not None and p[0] > ind:
                    raise self.err("bad indentation in a sequence")
                return out
            line = self.lines[self.i]
            rest = line[ind + 1:]
            if not rest.strip() or rest.strip().startswith("#"):
                self.i += 1
                out.append(self.node(ind + 1))
            else:
                # "- value": the value starts at its own column, on this line
                col = ind + 1 + (len(rest) - len(rest.lstrip(" ")))
                self.lines[self.i] = " " * col + rest.lstrip(" ")
                out.append(self.node(col))

    def mapping(self, ind: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while True:
            p = self.peek()
            if p is None or p[0] != ind:
                if p is not None and p[0] > ind:
                    raise self.err("bad indentation in a mapping")
                return out
            text = p[1]
            m = _KEY.match(text)
            if m is None:
                if text == "-" or text.startswith("- "):
                    return out
                raise self.err(f"expected 'key: value', got {text[:40]!r}")
            raw_key = text[: m.end()].rstrip()[:-1].rstrip()
            key = self.key(raw_key)
            if key in out:
                raise self.err(f"duplicate key {key!r}")
            rest = text[m.end():].strip()
            line_no = self.i
            self.i += 1
            if not rest or rest.startswith("#"):
                nxt = self.peek()
                if nxt is not None and nxt[0] == ind and (nxt[1] == "-" or nxt[1].startswith("- ")):
                    out[key] = self.seq(ind)
                elif nxt is not None and nxt[0] > ind:
                    out[key] = self.node(ind + 1)
                else:
                    out[key] = None
            elif rest[0] in "|>":
                out[key] = self.block_scalar(rest, ind, line_no)
            else:
                out[key] = self.inline(rest, ind, line_no)

    def key(self, raw: str) -> str:
        if raw[:1] in "\"'":
            v = self.quoted(raw, 0)[0]
        else:
            v = raw
            if v[:1] in "&*!?":
                raise self.err(f"unsupported key {raw[:40]!r}")
        return str(v)

    # ------------------------------------------------------------ scalars

    def inline(self, rest: str, ind: int, line_no: int) -> Any:
        """A value after ``key:`` (or a sequence item) that may continue on more-indented
        lines (plain or quoted folding, flow collections)."""
        if rest[0] in "[{":
            text = rest
            while not _balanced(text):
                if self.i >= len(self.lines):
                    raise self.err("unterminated flow collection", line_no)
                text += " " + self.lines[self.i].strip()
                self.i += 1
            value, pos = _Flow(text, self.err).parse(0)
            tail = text[pos:].strip()
            if tail and not tail.startswith("#"):
                raise self.err(f"unexpected {tail[:40]!r} after a flow collection", line_no)
            return value
        if rest[0] in "\"'":
            text = rest
            while True:
                try:
                    value, pos = self.quoted(text, 0)
                    break
                except _Unterminated:
                    if self.i >= len(self.lines):
                        raise self.err("unterminated quoted string", line_no) from None
                    nxt = self.lines[self.i].strip()
                    text += "\n" + nxt
                    self.i += 1
            tail = text[pos:].strip()
            if tail and not tail.startswith("#"):
                raise self.err(f"unexpected {tail[:40]!r} after a quoted string", line_no)
            return value
        parts = [_strip_comment(rest)]
        while True:
            p = self.peek()
            if p is None or p[0] <= ind:
                break
            if _KEY.match(p[1]) or p[1].startswith("- "):
                raise self.err("mapping or sequence inside a plain scalar")
            parts.append(_strip_comment(p[1]))
            self.i += 1
        text = " ".join(x for x in parts if x)
        return plain_value(text) if len(parts) == 1 else text

    def scalar_lines(self, ind: int, text: str, min_indent: int) -> Any:
        line_no = self.i
        self.i += 1
        if text[0] in "|>":
            return self.block_scalar(text, min_indent - 1, line_no)
        return self.inline(text, ind - 1 if ind else -1, line_no)

    def quoted(self, text: str, pos: int) -> tuple[str, int]:
        """The quoted scalar starting at ``text[pos]`` → (value, index after it)."""
        q = text[pos]
        i = pos + 1
        while i < len(text):
            c = text[i]
            if q == '"' and c == "\\":
                i += 2
                continue
            if c == q:
                if q == "'" and text[i + 1: i + 2] == "'":
                    i += 2
                    continue
                raw = _fold(text[pos + 1: i], q)
                return (raw.replace("''", "'") if q == "'" else self.unescape(raw)), i + 1
            i += 1
        raise _Unterminated

    def unescape(self, raw: str) -> str:
        out: list[str] = []
        i = 0
        while i < len(raw):
            c = raw[i]
            if c != "\\":
                out.append(c)
                i += 1
                continue
            e = raw[i + 1: i + 2]
            if e in _ESC:
                out.append(_ESC[e])
                i += 2
                continue
            size = {"x": 2, "u": 4, "U": 8}.get(e)
            digits = raw[i + 2: i + 2 + size] if size else ""
            if size is None or len(digits) != size:
                raise self.err(f"bad escape \\{e}{digits}")
            try:
                out.append(chr(int(digits, 16)))
            except ValueError:
                raise self.err(f"bad escape \\{e}{digits}") from None
            i += 2 + size
        return "".join(out)

    def block_scalar(self, header: str, parent: int, line_no: int) -> str:
        h = _strip_comment(header)
        style, flags = h[0], h[1:]
        chomp, explicit = "clip", 0
        for f in flags:
            if f == "-":
                chomp = "strip"
            elif f == "+":
                chomp = "keep"
            elif f.isdigit() and f != "0":
                explicit = int(f)
            else:
                raise self.err(f"bad block scalar header {header!r}", line_no)
        lines: list[str] = []
        block_ind = parent + explicit if explicit else None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if not line.strip():
                lines.append("")
                self.i += 1
                continue
            ind = self.indent(line)
            if block_ind is None:
                if ind <= parent:
                    break
                block_ind = ind
            if ind < block_ind:
                break
            lines.append(line[block_ind:])
            self.i += 1
        # trailing blank lines belong to chomping
        body = lines
        trailing = 0
        while body and body[-1] == "":
            body = body[:-1]
            trailing += 1
        if style == "|":
            text = "\n".join(body)
        else:
            text = _fold_block(body)
        if not body:
            return "\n" * trailing if chomp == "keep" else ""
        if chomp == "strip":
            return text
        if chomp == "keep":
            return text + "\n" * (trailing + 1)
        return text + "\n"


class _Unterminated(Exception):
    pass


def _fold(raw: str, quote: str) -> str:
    """Fold a multi-line quoted scalar (on its source text): a line break becomes a space,
    each blank line a newline; in double quotes an escaped line break joins the lines."""
    if "\n" not in raw:
        return raw
    lines = raw.split("\n")
    out = lines[0].rstrip(" \t")
    blank = 0
    for ln in lines[1:]:
        s = ln.strip(" \t")
        if not s:
            blank += 1
            continue
        if quote == '"' and out.endswith("\\") and not out.endswith("\\\\"):
            out = out[:-1] + s
        else:
            out += ("\n" * blank if blank else " ") + s
        blank = 0
    return out + "\n" * blank if blank else out


def _fold_block(lines: list[str]) -> str:
    """Folded block scalar (``>``): breaks between normal lines become spaces, blank lines
    newlines; more-indented lines keep their breaks."""
    out = ""
    started = False
    prev_normal = False
    breaks = 0
    for ln in lines:
        if ln == "":
            breaks += 1
            continue
        more = ln[0] in " \t"
        if not started:
            out = "\n" * breaks + ln
            started = True
        elif breaks:
            out += "\n" * (breaks if prev_normal and not more else breaks + 1) + ln
        else:
            out += (" " if prev_normal and not more else "\n") + ln
        prev_normal = not more
        breaks = 0
    return out


def _balanced(text: str) -> bool:
    depth = 0
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "#" and (i == 0 or text[i - 1].isspace()):
            break
        i += 1
    return depth <= 0


class _Flow:
    def __init__(self, text: str, err: Any):
        self.t = text
        self.err = err

    def ws(self, i: int) -> int:
        while i < len(self.t) and self.t[i].isspace():
            i += 1
        return i

    def parse(self, i: int) -> tuple[Any, int]:
        i = self.ws(i)
        if i >= len(self.t):
            raise self.err("unexpected end of a flow collection")
        c = self.t[i]
        if c == "[":
            out: list[Any] = []
            i = self.ws(i + 1)
            while self.t[i: i + 1] != "]":
                v, i = self.parse(i)
                out.append(v)
                i = self.ws(i)
                if self.t[i: i + 1] == ",":
                    i = self.ws(i + 1)
                elif self.t[i: i + 1] != "]":
                    raise self.err(f"expected ',' or ']' in {self.t[:60]!r}")
            return out, i + 1
        if c == "{":
            d: dict[str, Any] = {}
            i = self.ws(i + 1)
            while self.t[i: i + 1] != "}":
                k, i = self.parse_scalar(i, key=True)
                i = self.ws(i)
                if self.t[i: i + 1] != ":":
                    raise self.err(f"expected ':' in {self.t[:60]!r}")
                v, i = self.parse(i + 1)
                if str(k) in d:
                    raise self.err(f"duplicate key {k!r}")
                d[str(k)] = v
                i = self.ws(i)
                if self.t[i: i + 1] == ",":
                    i = self.ws(i + 1)
                elif self.t[i: i + 1] != "}":
                    raise self.err(f"expected ',' or '}}' in {self.t[:60]!r}")
            return d, i + 1
        return self.parse_scalar(i)

    def parse_scalar(self, i: int, key: bool = False) -> tuple[Any, int]:
        i = self.ws(i)
        c = self.t[i: i + 1]
        if c in ("'", '"'):
            p = _Parser("")
            try:
                return p.quoted(self.t, i)
            except _Unterminated:
                raise self.err("unterminated quoted string") from None
        j = i
        stop = ",]}:" if key else ",]}"
        while j < len(self.t) and self.t[j] not in stop:
            if self.t[j] == ":" and (j + 1 >= len(self.t) or self.t[j + 1] in " ,]}"):
                break
            j += 1
        return plain_value(self.t[i:j]), j


def loads(text: str) -> Any:
    """Parse one YAML document of the supported subset."""
    return _Parser(text).document()
