"""Content-addressed blobs: find them, and prove they are what the
descriptor says (size, then a streaming hash) before anything reads them."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

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

    def verify(self, desc: Descriptor) -> str:
        """The path of a blob whose size and digest match ``desc``."""
        path = self._checked_path(desc)
        algorithm, _, expected = desc.digest.partition(":")
        if hash_file(path, algorithm) != expected:
            raise CorruptError(f"blob {short(desc.digest)} does not match its digest")
        return path

    def verified_paths(self, descs: Iterable[Descriptor]) -> Iterator[str]:
        """The paths of ``descs`` in order, each yielded once its hash is
        checked. All hashes start at once on a thread pool (hashlib drops the
        GIL), so later layers are verified while the caller reads earlier
        ones."""
        descs = list(descs)
        for desc in descs:  # cheap checks first: a missing blob fails fast
            self._checked_path(desc)
        workers = max(1, min(len(descs), os.cpu_count() or 1, 4))
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(self.verify, desc) for desc in descs]
            try:
                for future in futures:
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

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
