"""cloud-config YAML (core0.boot.safeyaml): PyYAML's SafeLoader, stricter. The cases of the
former hand-written subset parser are kept; on the corpus (tests/unit/yaml_corpus, documents
from the cloud-config tests and cloud-init style examples) it reads exactly what PyYAML reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from core0.boot import safeyaml

CORPUS = sorted((Path(__file__).parent / "yaml_corpus").glob("*.yaml"))


def test_subset() -> None:
    doc = safeyaml.loads("""#cloud-config
a: 1
b: '0644'
c: 0644
d: [x, "y z", {k: v}]
e:
- one
- k: v
  k2: [1, 2]
f: |
  line
    more
g: >-
  folded
  text
h: "esc\\t\\u00e9"
i: yes
j: ~
k: http://host:80/p#frag   # comment
""")
    assert doc == {"a": 1, "b": "0644", "c": 0o644, "d": ["x", "y z", {"k": "v"}],
                   "e": ["one", {"k": "v", "k2": [1, 2]}], "f": "line\n  more\n",
                   "g": "folded text", "h": "esc\t\u00e9", "i": True, "j": None,
                   "k": "http://host:80/p#frag"}


@pytest.mark.parametrize("text", [
    "a: &x 1\nb: *x\n", "a: !!python/object x\n", "a: 1\na: 2\n", "a:\n\tb: 1\n", "a: [1\n",
    "---\na: 1\n---\nb: 1\n", "a: 1\n  b: 2\n",
    # beyond the old cases
    "a: &x 1\n", "a: !!binary aGk=\n", "a: !local x\n", "a: !!str 1\n", "? [a]\n: b\n",
    "? {k: v}\n: b\n", "a:\n  b: 1\n  b: 2\n", "a: " + "[" * 100 + "]" * 100 + "\n",
    "a: !!python/object/apply:os.system [id]\n",
])
def test_refused(text: str) -> None:
    with pytest.raises(safeyaml.YAMLError):
        safeyaml.loads(text)


@pytest.mark.parametrize(("text", "value"), [
    ("2024-01-01", "2024-01-01"),  # PyYAML: datetime.date
    ("2024-01-01 10:00:00", "2024-01-01 10:00:00"),
    ("1:20", "1:20"),  # PyYAML: 80 (sexagesimal)
    (".nan", ".nan"),
    ("=", "="),  # PyYAML: no constructor
    ("0x1f", 31), ("0b101", 5), ("1_000", 1000), ("-.inf", float("-inf")), ("1.5e+3", 1500.0),
    ("off", False), ("On", True), ("0o17", "0o17"),
])
def test_scalars_stay_json(text: str, value: Any) -> None:
    assert safeyaml.loads(f"k: {text}\n") == {"k": value}


def test_merge_key_is_a_plain_key() -> None:
    assert safeyaml.loads("<<: {a: 1}\n") == {"<<": {"a": 1}}


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus_reads_as_pyyaml_does(path: Path) -> None:
    text = path.read_text()
    ours = safeyaml.loads(text)
    assert isinstance(ours, dict) and ours
    assert ours == yaml.safe_load(text)


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 7
