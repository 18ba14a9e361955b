"""0-core's level-prefixed output protocol."""

from __future__ import annotations

from core0.proc.output import Message, OutputParser, Tail


def feed_all(p: OutputParser, *chunks: bytes) -> list[Message]:
    out = []
    for c in chunks:
        out += p.feed(c)
    return out + p.close()


def test_plain_lines_split_across_chunks() -> None:
    msgs = feed_all(OutputParser(1), b"hel", b"lo\nwor", b"ld\n")
    assert [(m.level, m.text) for m in msgs] == [(1, "hello"), (1, "world")]


def test_prefix_and_block() -> None:
    msgs = feed_all(OutputParser(2), b"3::public\n20:::\n{\"a\":\n1}\n:::\nafter\n")
    assert [(m.level, m.text) for m in msgs] == [(3, "public"), (20, '{"a":\n1}'), (2, "after")]


def test_unterminated_block_flushed_at_close() -> None:
    msgs = feed_all(OutputParser(1), b"20:::\n[1]\n")
    assert msgs == [Message(20, "[1]")]


def test_last_line_without_newline() -> None:
    msgs = feed_all(OutputParser(1), b"a\nb")
    assert msgs[-1] == Message(1, "b", nl=False)
    t = Tail()
    for m in msgs:
        t.add(m.text, m.nl)
    assert t.text() == "a\nb"


def test_tail_keeps_end() -> None:
    t = Tail(limit=10)
    for i in range(100):
        t.add(str(i))
    assert t.text().endswith("99\n") and len(t.text()) <= 10


def test_huge_line_is_split() -> None:
    p = OutputParser(1)
    msgs = p.feed(b"x" * 200_000) + p.close()
    assert sum(len(m.text) for m in msgs) == 200_000
