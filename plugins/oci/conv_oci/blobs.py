"""Content-addressed blobs: find them and check their size; small (JSON)
blobs are hashed here, layers as they are read (layers.py)."""

from __future__ import annotations

import hashlib
import os
import stat

from conv_oci.layers import LayerBlob
from conv_oci.model import MAX_JSON_BYTES, Descriptor, check_digest, short
from convcore.errors import CorruptError, NotFoundError

HASH_CHUNK = 1 << 20


def hash_file(path: str, algorithm: str) -> str:
    """Hex digest of a host file, read with one reused buffer."""
    h = hashlib.new(algorithm)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class LayoutBlobs:
    """The blobs/ directory of an OCI image layout."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, digest: str) -> str:
        algorithm, _, hexdigest = check_digest(digest, "blob").partition(":")
        return os.path.join(self.root, "blobs", algorithm, hexdigest)

    def _checked_path(self, desc: Descriptor) -> str:
        path = self.path(desc.digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(f"blob {short(desc.digest)} is missing from the layout "
                                f"({os.path.relpath(path, self.root)})") from None
        if not stat.S_ISREG(st.st_mode):
            raise CorruptError(f"blob {short(desc.digest)} is not a regular file")
        if st.st_size != desc.size:
            raise CorruptError(f"blob {short(desc.digest)} is {st.st_size} bytes, "
                               f"its descriptor says {desc.size}")
        return path

    def layers(self, descs: list[Descriptor]) -> list[LayerBlob]:
        """Where the layer blobs are (missing or wrongly sized: an error
        now; digests are checked as the blobs are read)."""
        return [LayerBlob(short(d.digest), self._checked_path(d), 0, d.size, digest=d.digest)
                for d in descs]

    def read(self, desc: Descriptor) -> bytes:
        """A small (JSON) blob's verified bytes."""
        if desc.size > MAX_JSON_BYTES:
            raise CorruptError(f"blob {short(desc.digest)} is {desc.size} bytes, "
                               f"too large for a {desc.media_type or 'JSON'} document")
        path = self._checked_path(desc)
        with open(path, "rb") as f:
            raw = f.read(desc.size + 1)
        algorithm, _, expected = desc.digest.partition(":")
        if len(raw) != desc.size or hashlib.new(algorithm, raw).hexdigest() != expected:
            raise CorruptError(f"blob {short(desc.digest)} does not match its digest")
        return raw
