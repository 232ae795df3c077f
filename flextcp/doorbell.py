"""Doorbells: an eventfd plus the *armed-flag* protocol that keeps the common
case free of syscalls.

Protocol (one ``uint32_t armed`` word in shared memory per sleeper, e.g.
``tas_ctx_hdr.app_armed`` / ``fp_armed[c]``):

Sleeper (the side that wants to block)::

    armed = 1                 # 1. announce the intent to sleep
    <full fence>              # 2. store armed before loading queue indices
    if any queue non-empty:   # 3. re-check every queue it consumes
        armed = 0; continue   #    work arrived meanwhile: do not sleep
    poll(eventfd)             # 4. block
    armed = 0; drain()        # 5. on wake: clear armed, reset the counter

Producer (after publishing entries with a release store of the ring head)::

    <full fence>              # store head before loading armed
    if armed == 1:            # only then pay for the syscall
        ring()

Either the sleeper's re-check (3) sees the new entries, or the producer sees
armed == 1 and writes the eventfd, so no wakeup is lost.  The two fences
are store->load orderings that release/acquire alone do not provide; C
users should use ``__atomic_thread_fence(__ATOMIC_SEQ_CST)``.  Python cannot
issue that fence itself, so Python sleepers should block with a bounded
timeout as a safety net.  A spurious wakeup (armed seen as 1 after the
sleeper already woke) is harmless: the eventfd counter is drained.
"""

from __future__ import annotations

import os

__all__ = ["Doorbell"]


class Doorbell:
    """An eventfd (EFD_NONBLOCK | EFD_CLOEXEC)."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def ring(self) -> None:
        """Signal the sleeper (add 1 to the counter)."""
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass  # counter saturated: the sleeper is already signalled

    def drain(self) -> int:
        """Reset the counter; returns how many rings were pending (0 if none)."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0

    def ring_if_armed(self, armed_ptr) -> bool:
        """Ring only if ``*armed_ptr`` (a cffi ``uint32_t *``) is 1.  Returns
        whether it rang.  The sleeper clears armed itself on wake."""
        if armed_ptr[0] == 1:
            self.ring()
            return True
        return False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Doorbell:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
