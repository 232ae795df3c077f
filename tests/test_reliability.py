"""Reliability matrix (issue 4): bulk transfers between Linux and the stack
through the seeded link emulator, both directions, under loss, reordering,
duplication, corruption, delay + jitter, a rate limit and a mix.  Every
transfer must arrive byte-identical (sha256 on both ends) within a generous
bound; goodput and retransmission counts are printed (``pytest -s``).

The topology, the stack and the transfers are scripts/reliability_matrix.py
(which also runs the Linux-to-Linux baseline and prints the issue's table).
Sizes: 64 MiB per transfer, every condition (the issue's size, ~7 min);
``TAS_RELIABILITY_QUICK=1`` (16 MiB, slow conditions capped) while
developing, see the script.

Needs root (network namespaces, TAP); CI runs it as root.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, TAP devices)"),
]

_path = Path(__file__).resolve().parent.parent / "scripts" / "reliability_matrix.py"
_spec = importlib.util.spec_from_file_location("reliability_matrix", _path)
rm = importlib.util.module_from_spec(_spec)
sys.modules["reliability_matrix"] = rm
_spec.loader.exec_module(rm)


@pytest.fixture(scope="module")
def matrix():
    with tempfile.TemporaryDirectory(prefix="tas-reliability-") as wd, rm.Matrix(Path(wd), seed=4) as m:
        yield m


@pytest.mark.parametrize("direction", ["linux->stack", "stack->linux"])
@pytest.mark.parametrize("cond", [c.name for c in rm.CONDITIONS if c.name != "clean"])
def test_bulk_under_impairment(matrix, cond, direction):
    assert matrix.alive(), "tas start died:\n" + matrix.stack_log()
    res = matrix.run_condition(rm.BY_NAME[cond], directions=[direction])
    row = res["rows"][0]
    keep = ("dropped_loss", "dropped_queue", "duplicated", "corrupted", "reordered")
    emu = {d: {k: v for k, v in c.items() if k in keep and v} for d, c in res["emu"].items()}
    print(f"\n{cond} ({res['desc']}), {direction}, {res['mib']:.0f} MiB: {rm.fmt_row(row)}; emulator {emu}")
    assert row["ok"], f"{cond} {direction}: {row['error']}\n{matrix.stack_log()}"
    assert matrix.alive(), "tas start died:\n" + matrix.stack_log()
