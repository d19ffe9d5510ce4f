"""Measurement ids of rows, computed for many rows at once (shared by every source: the id is part
of the common row model, see `cmm_twin.records.measurement_id`)."""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from cmm_twin.records import MEASUREMENT_ID_NAMESPACE

_HASH_DIGEST = type(hashlib.sha1()).digest
_ID_CHARACTERS = b"-5\n"
"""Prefixed to the hex digits of the digests: the dash, the version digit and the line end of an id."""
_ID_VARIANT = np.zeros(256, dtype=np.uint8)
_ID_VARIANT[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.frombuffer(b"89ab" * 4, dtype=np.uint8)
"""Hex digit of the high nibble of a digest's byte 8 -> that digit with the RFC 4122 variant bits set."""


class MeasurementIds:
    """UUIDv5 ids of rows, equal to `records.measurement_id`; keeps the character layout of the
    largest batch so far (grown on demand)."""

    def __init__(self) -> None:
        self._positions = np.empty(0, dtype=np.intp)

    def _layout(self, count: int) -> NDArray[np.intp]:
        """Where each character of `count` ids `xxxxxxxx-xxxx-5xxx-Vxxx-xxxxxxxxxxxx\\n` comes from, in
        `_ID_CHARACTERS` + the hex digits of the digests (40 per digest; the variant digit V is put in after)."""
        if len(self._positions) < 37 * count:
            rows = max(count, 2 * len(self._positions) // 37)
            digits = [*range(8), -3, *range(8, 12), -3, -2, *range(13, 16), -3, *range(16, 20), -3, *range(20, 32), -1]
            one = np.array(digits, dtype=np.intp) + 3  # -3, -2, -1: the dash, the 5 and the line end
            starts = np.where(one >= 3, 40, 0) * np.arange(rows, dtype=np.intp)[:, None]
            self._positions = (one + starts).ravel()
        return self._positions[: 37 * count]

    def __call__(
        self, machine_ids: Sequence[str], part_ids: Sequence[str], features: Sequence[str], timestamps: Sequence[str]
    ) -> list[str]:
        """The ids of the rows (timestamps in canonical form).

        The RFC 4122 computation of `uuid.uuid5` (SHA-1 of namespace + name, version and variant bits
        set), one SHA-1 per row, with the bit setting and formatting done for all rows at once by
        NumPy on the hex digits of the digests instead of a `uuid.UUID` object per row (which costs
        about five times as much).
        """
        count = len(machine_ids)
        if count == 0:
            return []
        namespace = MEASUREMENT_ID_NAMESPACE.bytes
        names = "\n".join(map("|".join, zip(machine_ids, part_ids, features, timestamps, strict=True))).encode()
        if names.count(b"\n") == count - 1 and b"\n" not in namespace:  # one SHA-1 input per line
            messages = (namespace + names.replace(b"\n", b"\n" + namespace)).split(b"\n")
        else:  # a value holds a line break
            rows = zip(machine_ids, part_ids, features, timestamps, strict=True)
            messages = [namespace + "|".join(row).encode() for row in rows]
        digests = b"".join(map(_HASH_DIGEST, map(hashlib.sha1, messages)))
        source = np.frombuffer(_ID_CHARACTERS + binascii.hexlify(digests), dtype=np.uint8)
        text = source.take(self._layout(count))
        text[19::37] = _ID_VARIANT[source[len(_ID_CHARACTERS) + 16 :: 40]]  # the high nibble of byte 8
        ids = text.tobytes().decode("ascii").split("\n")
        ids.pop()
        return ids
