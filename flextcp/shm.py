"""Shared-memory regions backed by memfds (never files in /dev/shm).

A :class:`Region` is a memfd, its size and a shared mmap of it.  It is
created by one process and handed to others as a file descriptor (fork
inheritance or SCM_RIGHTS), which then :meth:`Region.attach` it.
"""

from __future__ import annotations

import mmap
import os

from flextcp.native import ffi

__all__ = ["Region"]


class Region:
    """A shared memory region: ``.fd`` (memfd), ``.mm`` (mmap), ``.addr``
    (cffi ``void *`` to the first byte), ``.size``."""

    def __init__(self, fd: int, size: int, *, owns_fd: bool = True) -> None:
        if size <= 0:
            raise ValueError("region size must be positive")
        self.fd = fd
        self.size = size
        self._owns_fd = owns_fd
        self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._buf = ffi.from_buffer(self.mm)
        self.addr = ffi.cast("void *", self._buf)
        self._closed = False

    @classmethod
    def create(cls, size: int, purpose: str = "region") -> Region:
        """New zero-filled memfd region of ``size`` bytes named ``tas-<purpose>``."""
        fd = os.memfd_create(f"tas-{purpose}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            return cls(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int, size: int | None = None, *, owns_fd: bool = True) -> Region:
        """Map an existing memfd; ``size`` defaults to the file size (and may not
        exceed it)."""
        actual = os.fstat(fd).st_size
        if size is None:
            size = actual
        if size > actual:
            raise ValueError(f"region fd holds {actual} bytes, {size} expected")
        return cls(fd, size, owns_fd=owns_fd)

    def cast(self, ctype: str, offset: int = 0):
        """``ffi.cast("<ctype> *", addr + offset)``, bounds-checked on offset."""
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset} outside region of {self.size} bytes")
        return ffi.cast(f"{ctype} *", ffi.cast("char *", self.addr) + offset)

    def ptr(self, offset: int = 0):
        """``void *`` at ``offset``."""
        return self.cast("void", offset) if offset else self.addr

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A memoryview of ``[offset, offset+length)``; release it before close()."""
        if length is None:
            length = self.size - offset
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError("view outside region")
        return memoryview(self.mm)[offset : offset + length]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.addr = None
        try:
            ffi.release(self._buf)
        except Exception:
            pass
        try:
            self.mm.close()
        except BufferError:
            pass  # a view is still exported; the mapping goes with the process
        if self._owns_fd:
            os.close(self.fd)

    def __enter__(self) -> Region:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
