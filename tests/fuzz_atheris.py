"""Coverage-guided fuzzing (atheris, i.e. libFuzzer) of the wire: decode → validate → route,
through the dispatcher's own step and the invariant of tests/fuzz_harness.py (one outcome per
command, no exception, no lost id).

    python tests/fuzz_atheris.py -max_total_time=300 [-artifact_prefix=DIR/] [CORPUS_DIR…]

The first input byte picks the queue's role, the rest is the popped command. The corpus starts
with one valid command per registered command (written to a temp dir when none is given), so
mutations reach every argument schema early. tests/chaos/test_fuzz_atheris.py runs it in CI.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["core0", "core0_client", "fuzz_harness"]):
    from fuzz_harness import Target, schema_of

    from core0.registry import Role

ROLES = list(Role)


def seeds(target: Target, where: Path) -> None:
    """One valid-looking command per registered command (required fields given a value of
    their type), plus a few broken ones."""
    simple = {"string": "a", "integer": 1, "number": 1.0, "boolean": True, "array": [],
              "object": {}}
    for i, name in enumerate(target.commands):
        schema = schema_of(name)
        props = schema.get("properties", {})
        args = {k: (props[k].get("enum") or [simple.get(props[k].get("type", ""), "a")])[0]
                for k in schema.get("required", []) if k in props}
        cmd = {"id": f"seed-{i}", "command": name, "arguments": args}
        (where / f"seed-{i}").write_bytes(b"\x02" + json.dumps(cmd).encode())
    for j, raw in enumerate([b'{"id":"x","command":"core.ping"', b'{"id":"x:flag"}', b"\xff"]):
        (where / f"broken-{j}").write_bytes(b"\x02" + raw)


def main() -> None:
    logging.disable(logging.CRITICAL)  # dead letters and refusals are logged by the dispatcher
    args = list(sys.argv)
    # temporary files go inside the artifacts' directory when there is one: libFuzzer ends the
    # process with exit() at -max_total_time, so nothing of ours runs after it to remove them
    prefix = [a.split("=", 1)[1] for a in args if a.startswith("-artifact_prefix=")]
    where = os.path.dirname(prefix[-1]) if prefix and prefix[-1].endswith("/") else None
    target = Target(where)

    def one(data: bytes) -> None:
        if not data:
            return
        target.check(data[1:], ROLES[data[0] % len(ROLES)])

    corpus = None
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = tempfile.TemporaryDirectory(prefix="core0-fuzz-corpus-", dir=where)
        seeds(target, Path(corpus.name))
        args.append(corpus.name)
    atheris.Setup(args, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
