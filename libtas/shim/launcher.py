"""`tas run [--state-dir DIR] -- CMD ARGS...`: exec CMD with the shim active."""

from __future__ import annotations

import os
import sys


def _libpath() -> str:
    import libtas

    return os.path.dirname(os.path.dirname(os.path.abspath(libtas.__file__)))


def check_stack(state_dir: str) -> str | None:
    """None if a stack answers at state_dir, else an error message."""
    from libtas.api import Stack

    try:
        Stack(state_dir).close()
    except OSError as e:
        return f"no TAS stack running at {state_dir} ({e.strerror or e}); start one with `tas start`"
    return None


def build_env(state_dir: str, env: dict | None = None) -> dict:
    from libtas.shim import SITE_DIR

    env = dict(os.environ if env is None else env)
    env["TAS_SHIM_STATE_DIR"] = state_dir
    env["TAS_STATE_DIR"] = state_dir
    env["TAS_SHIM_LIBPATH"] = _libpath()
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = SITE_DIR + (os.pathsep + old if old else "")
    return env


def run(state_dir: str | None, argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("tas run: no command given (usage: tas run [--state-dir DIR] -- CMD ARGS...)", file=sys.stderr)
        return 2
    state_dir = os.path.abspath(state_dir or os.environ.get("TAS_STATE_DIR") or "/run/tas/default")
    err = check_stack(state_dir)
    if err:
        print(f"tas run: {err}", file=sys.stderr)
        return 2
    env = build_env(state_dir)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # exec: CMD *is* this process, so signals reach it directly and its
        # exit status is ours
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"tas run: cannot run {argv[0]!r}: {e.strerror}", file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 0  # not reached
