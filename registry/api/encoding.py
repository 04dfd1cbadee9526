"""Request bodies sent compressed: ``Content-Encoding: gzip`` or ``deflate``.

``tritonclient``'s ``request_compression_algorithm`` sends them, and Triton reads them;
read as they are, they would fail as JSON that is not UTF-8. So the body limit layer
inflates them as they stream in, before any route sees a byte. The limit counts what
they inflate to, not what was sent: a few kilobytes of zeros can inflate to gigabytes,
so no step inflates more than the room left under the limit, plus one byte to tell
that the limit was passed.

Another coding (``br``, ``compress``) is refused with a 415 naming the ones read, rather
than read as if it were the body.
"""

from __future__ import annotations

import zlib

from registry.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

READ = ("gzip", "deflate")
_ALIASES = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
# NOTE: 32 + 15: zlib's own header or gzip's, whichever the body has (clients differ on
# which "deflate" means; both carry a checksum that is checked at the end)
_EITHER_HEADER = 47


def coding_of(value: str) -> str | None:
    """The coding a ``Content-Encoding`` value names, None for ``identity``; a 415 for
    one this server does not read (or a chain of several)."""
    named = value.strip().lower()
    if named in ("", "identity"):
        return None
    coding = _ALIASES.get(named)
    if coding is None:
        raise UnsupportedMediaType(
            f"Content-Encoding: {value.strip()}", READ, hint=" (or the body uncompressed)"
        )
    return coding


class Inflater:
    """One request body's inflation, chunk by chunk, never past ``limit`` bytes."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.inflated = 0
        self._stream = zlib.decompressobj(_EITHER_HEADER)

    def feed(self, data: bytes, last: bool) -> bytes:
        """What ``data`` inflates to; ``last``: the body ends with it."""
        pieces = []
        pending = data
        try:
            while pending:
                room = self.limit - self.inflated
                piece = self._stream.decompress(pending, room + 1)
                self.inflated += len(piece)
                if self.inflated > self.limit:
                    raise PayloadTooLarge(self.limit)
                pieces.append(piece)
                pending = self._stream.unconsumed_tail
        except zlib.error as exc:
            raise BadRequest(f"the body is not valid {self.coding}: {exc}") from None
        if self._stream.unused_data:
            raise BadRequest(f"the body goes on past the end of its {self.coding} data")
        if last and not self._stream.eof:
            raise BadRequest(f"the body ends before its {self.coding} data does")
        return b"".join(pieces)
