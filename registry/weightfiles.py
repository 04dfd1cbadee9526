"""Weight files on disk: confinement to the weights root, stamps, digests, verified reads.

Two rules keep a pinned ``sha256`` honest. The bytes that are hashed are the bytes that
are deserialised (``read_weights`` reads the file once, into memory, and hashes that), so a
file swapped between a check and a load is caught. And the digest cache is keyed by a
stamp that an overwrite cannot keep: ``st_ctime`` moves on every write and on every
``utime``, and no unprivileged call can set it back, unlike ``st_mtime``.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from registry.errors import ChecksumMismatch, WeightsNotFound, WeightsOutsideRoot
from registry.manifest import VersionSpec

Stamp = tuple[int, int, int, int, int]
"""``(device, inode, size, mtime, ctime)``, nanoseconds: changes whenever the content can."""


def resolve_weights(root: Path, version: VersionSpec) -> Path:
    """The weight file's real path, refusing any that resolves outside ``root``."""
    return confined_file(root, version.path)


def confined_file(root: Path, relative: PurePosixPath) -> Path:
    """A file's real path under ``root``, refusing any that resolves outside it."""
    root = root.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise WeightsOutsideRoot(str(relative))
    if not path.is_file():
        raise WeightsNotFound(str(relative))
    return path


def tensor_bytes(path: Path) -> int:
    """About what a weight file's tensors take in memory: the file's size, less the header
    of a safetensors file (a length, then that much JSON). Raises ``OSError``."""
    size = path.stat().st_size
    if path.suffix != ".safetensors" or size < 8:
        return size
    with path.open("rb") as file:
        header = int.from_bytes(file.read(8), "little")
    return max(0, size - 8 - header)


def stamp(path: Path) -> Stamp:
    return stamp_of(path.stat())


def stamp_of(status: os.stat_result) -> Stamp:
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


def file_sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


class WeightDigests:
    """sha256 of weight files, hashed again only when a file's ``stamp`` changes.

    Reloads fingerprint every weight file; without this a manifest of large models would
    be re-hashed on every poll.
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[Stamp, str]] = {}
        self._lock = threading.Lock()

    def digest(self, path: Path, shown: str) -> str:
        """The sha256 of the confined file at ``path`` (``shown`` names it in errors)."""
        current = stamp(path)
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[0] == current:
            return known[1]
        with open_confined(path, shown) as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        self.remember(path, current, digest)
        return digest

    def remember(self, path: Path, stamp: Stamp, digest: str) -> None:
        """Record a digest computed elsewhere (a load that read the file anyway)."""
        with self._lock:
            self._known[path] = (stamp, digest)


@dataclass(frozen=True, slots=True)
class WeightBytes:
    """A weight file's content as read once, with the sha256 of exactly these bytes."""

    data: bytes
    sha256: str


def read_weights(
    root: Path, version: VersionSpec, digests: WeightDigests | None = None
) -> WeightBytes:
    """Read a confined weight file whole and check its declared sha256 on what was read.

    NOTE: ``open_confined`` checks the file it opened, not the path it was given, so
    nothing swapped in after ``resolve_weights`` leads outside the root. Holding the bytes
    costs the file's size once more during a load; it is what makes the checksum cover
    what is loaded. The digest goes into ``digests`` under the stamp taken before the
    read, so the next reload's fingerprinting does not hash the file again (any write
    since moves the stamp).
    """
    path = resolve_weights(root, version)
    with open_confined(path, str(version.path)) as file:
        before = stamp_of(os.fstat(file.fileno()))
        data = file.read()
    weights = WeightBytes(data, hashlib.sha256(data).hexdigest())
    check_sha256(version, weights.sha256)
    if digests is not None:
        digests.remember(path, before, weights.sha256)
    return weights


def open_confined(path: Path, shown: str) -> io.BufferedReader:
    """Open the file ``resolve_weights`` found, and check what was opened: a regular file
    still under the root it was resolved in.

    NOTE: between the check and the open, a folder on the way may have been swapped for a
    symlink out of the root, or the file for a FIFO (an open that never returns) or a
    device (a read that never ends). The last component is not followed, a FIFO opens
    without waiting, and the open file's own path (``/proc/self/fd``) must still be
    ``path``. An unreadable file is ``WeightsNotFound`` with the reason.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise WeightsNotFound(shown, cause=exc.strerror) from exc
    file = os.fdopen(descriptor, "rb")
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise WeightsNotFound(shown, cause="not a regular file")
        opened = Path(f"/proc/self/fd/{descriptor}")
        if opened.is_symlink() and Path(os.readlink(opened)) != path:
            raise WeightsOutsideRoot(shown)
    except BaseException:
        file.close()
        raise
    return file


def check_sha256(version: VersionSpec, actual: str) -> None:
    if version.sha256 is not None and actual != version.sha256:
        raise ChecksumMismatch(str(version.path), expected=version.sha256, actual=actual)
