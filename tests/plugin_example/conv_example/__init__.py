"""A minimal third-party conv plugin: ``listing:FILE`` writes one line per
tree entry (type, mode, owner, size, sha256 of the content, path), like a
manifest. It exists to prove that an outside distribution plugs into chains."""

from __future__ import annotations

import hashlib

from convcore import hookimpl
from convcore.format import TREE, Format, Option, parse_bool


def write_listing(tree, path: str, opts: dict, ctx) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for entry in tree.sorted():
            node = tree.resolve(entry)
            digest = "-"
            if opts["hash"] and node.data is not None:
                h = hashlib.sha256()
                with node.data.open() as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                digest = h.hexdigest()
            out.write(f"{node.kind.name.lower()} {node.mode:04o} {node.uid}:{node.gid} "
                      f"{node.size} {digest} /{entry.path}\n")


@hookimpl
def conv_register_formats(register):
    register(Format(
        name="listing",
        help="a text manifest of a tree, one line per entry (example plugin)",
        options=[Option("hash", True, "include sha256 of file contents", parse_bool)],
        sink=write_listing, sink_kind=TREE,
    ))
