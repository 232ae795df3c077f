"""libtas: the application library of the TAS stack (native API in libtas.api)."""

from libtas.api import DEFAULT_STATE_DIR, Connection, Context, Listener, Stack

__all__ = ["Stack", "Context", "Listener", "Connection", "DEFAULT_STATE_DIR"]
