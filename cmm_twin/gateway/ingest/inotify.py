"""Linux inotify on the inbox directory: the kernel wakes the event loop when a name appears in it,
so an idle gateway does not poll (watchfiles' loop wakes every `step` ms, 1,000 times a second
at the 1 ms the inbox needs for its latency). Elsewhere `DirectoryWatch` raises OSError and the
inbox falls back to watchfiles.

Events watched: IN_CREATE and IN_MOVED_TO (a file appears, or is renamed in: the well-behaved
writer's hand-over) and IN_CLOSE_WRITE (a writer that wrote in place closed it). A queue overflow
(IN_Q_OVERFLOW) asks for a rescan; the directory going away (IN_IGNORED, IN_DELETE_SELF,
IN_MOVE_SELF) ends the watch with an OSError, so the caller retries on a new one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from pathlib import Path

IN_CLOSE_WRITE = 0x0000_0008
IN_MOVED_TO = 0x0000_0080
IN_CREATE = 0x0000_0100
IN_DELETE_SELF = 0x0000_0400
IN_MOVE_SELF = 0x0000_0800
IN_Q_OVERFLOW = 0x0000_4000
IN_IGNORED = 0x0000_8000
IN_ONLYDIR = 0x0100_0000
WATCH_MASK = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
GONE = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then len bytes of name)
_READ_BYTES = 64 * 1024


def _libc() -> ctypes.CDLL:
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "inotify is Linux only")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc


class DirectoryWatch:
    """An inotify watch on one directory; `fileno()` becomes readable when events are waiting."""

    def __init__(self, directory: Path) -> None:
        """Raises OSError where inotify is unavailable (not Linux, the instance limit reached) or
        the directory cannot be watched."""
        libc = _libc()
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        if libc.inotify_add_watch(fd, os.fsencode(directory), WATCH_MASK) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, f"inotify_add_watch {directory}: {os.strerror(code)}")
        self._fd = int(fd)

    def fileno(self) -> int:
        """The inotify file descriptor (for `loop.add_reader`)."""
        return self._fd

    def read(self) -> tuple[list[str], bool]:
        """The names of the waiting events (in order, repeats included) and whether the kernel's
        queue overflowed (events were lost: rescan). Raises OSError when the directory went."""
        names: list[str] = []
        overflow = False
        while True:
            try:
                data = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                return names, overflow
            offset = 0
            while offset < len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                elif mask & GONE:
                    raise OSError(errno.ENOENT, "the watched directory was removed or moved")
                elif length:
                    raw = data[offset : offset + length].split(b"\0", 1)[0]
                    names.append(os.fsdecode(raw))
                offset += length

    def close(self) -> None:
        """Release the inotify instance (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
