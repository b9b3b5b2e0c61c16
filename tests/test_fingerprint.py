"""The default seed's digest of a tree: a function of the tree (its entries,
their metadata and each directory's order of children), not of the order
a source happened to fill the tree in."""

from __future__ import annotations

import pytest

from convcore.pipeline import fingerprint
from convcore.tree import BytesData, Entry, Kind, Tree

T = 1_700_000_000_123_456_789


def entries() -> list[Entry]:
    return [
        Entry("etc", Kind.DIR, 0o755, mtime_ns=T),
        Entry("etc/hostname", Kind.FILE, 0o644, mtime_ns=T, size=4, data=BytesData(b"host")),
        Entry("etc/link", Kind.SYMLINK, 0o777, mtime_ns=T, target="hostname"),
        Entry("usr", Kind.DIR, 0o755, mtime_ns=T),
        Entry("usr/bin", Kind.DIR, 0o755, mtime_ns=T),
        Entry("usr/bin/tool", Kind.FILE, 0o4755, mtime_ns=T, size=0),
        Entry("usr/bin/again", Kind.FILE, 0o4755, mtime_ns=T, link="usr/bin/tool"),
        Entry("var", Kind.DIR, 0o755, mtime_ns=T),
    ]


def tree_of(items: list[Entry]) -> Tree:
    tree = Tree(Entry("", Kind.DIR, 0o755, mtime_ns=T))
    for entry in items:
        tree.add(entry)
    return tree


def test_same_tree_same_digest_whatever_order_its_directories_were_filled_in():
    tree = tree_of(entries())
    before = fingerprint(tree)
    # a split scan fills the map of directories in another order; each
    # directory's children keep theirs
    tree._children = dict(reversed(tree._children.items()))
    assert [e.path for e in tree] == [""] + [e.path for e in entries()]
    assert fingerprint(tree) == before


@pytest.mark.parametrize("change", [
    lambda t: setattr(t.get("etc/hostname"), "mtime_ns", T + 1),
    lambda t: setattr(t.get("etc/hostname"), "size", 5),
    lambda t: setattr(t.get("usr/bin/tool"), "mode", 0o755),
    lambda t: setattr(t.get("etc/link"), "target", "other"),
    lambda t: setattr(t.get("usr/bin/again"), "link", None),
    lambda t: setattr(t.get("var"), "kind", Kind.FILE),
    lambda t: setattr(t.root, "mode", 0o700),
    lambda t: t.remove("var"),
    lambda t: t.add(Entry("var/new", Kind.FILE, mtime_ns=T)),
    lambda t: t.add(Entry("usr/bin/tool\udcff", Kind.FILE, mtime_ns=T)),  # undecodable name
])
def test_any_change_changes_the_digest(change):
    tree = tree_of(entries())
    before = fingerprint(tree)
    change(tree)
    assert fingerprint(tree) != before


def test_children_order_is_part_of_the_tree():
    items = entries()
    swapped = items[:1] + [items[2], items[1]] + items[3:]
    assert fingerprint(tree_of(swapped)) != fingerprint(tree_of(items))
    assert fingerprint(tree_of(swapped).sorted()) == fingerprint(tree_of(items).sorted())


def test_values_beyond_64_bits():
    """An archive may carry times no 64-bit integer holds; the digest still
    tells them apart."""
    a, b = tree_of(entries()), tree_of(entries())
    a.get("var").mtime_ns = 1 << 80
    b.get("var").mtime_ns = (1 << 80) + 1
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(a)


def test_the_seed_is_derived_when_first_used_as_it_would_have_been_at_once():
    from convcore.format import Context
    eager, lazy = Context(), Context()
    eager.derive_seed("chain", "digest")
    calls = []
    lazy.derive_seed_later(lambda: calls.append(1) or ("chain", "digest"))
    assert calls == []
    assert lazy.uuid("x") == eager.uuid("x")
    assert lazy.seed == eager.seed and calls == [1]
    # a given seed is never derived from the input
    given = Context(seed="s")
    given.derive_seed_later(lambda: pytest.fail("fingerprinted with --seed"))
    assert given.seed == "s"


def test_a_chain_that_uses_no_seed_does_not_fingerprint_its_input(tmp_path, monkeypatch):
    import convcore.pipeline as pipeline
    calls = []
    real = pipeline.fingerprint
    monkeypatch.setattr(pipeline, "fingerprint", lambda value: calls.append(1) or real(value))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"data")
    pipeline.convert(f"dir:{src} -> tar:{tmp_path / 'a.tar'}")
    assert calls == []
    pipeline.convert(f"dir:{src} -> ext4 -> raw:{tmp_path / 'a.img'}")  # a UUID: fingerprinted
    assert calls == [1]
