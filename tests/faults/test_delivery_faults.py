"""Issue 4's fault test, kept small: faults between the sender and the emulator, a SIGKILLed and
restarted producer, and afterwards exactly the tracked events in the emulator."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "fault_soak", Path(__file__).parents[2] / "bench" / "fault_soak.py"
)
assert _spec is not None and _spec.loader is not None
fault_soak = importlib.util.module_from_spec(_spec)
sys.modules["fault_soak"] = fault_soak  # dataclasses look their module up there
_spec.loader.exec_module(fault_soak)


def test_no_event_lost_or_duplicated_through_faults_and_kills() -> None:
    """429s, 500s, stalls and dropped connections on half of the requests, and a producer with the
    default delivery settings killed with SIGKILL mid-stream twice: every acknowledged event arrives
    once, nothing else arrives."""
    result = fault_soak.run_soak(events=8000, faults=0.5, kills=2, batch=100, seed=7)
    assert result.kills == 2
    assert sum(result.faults.values()) - result.faults["passed"] >= 3, result.faults
    assert result.done, "the producer acknowledged events"
    assert not result.lost, f"{len(result.lost)} acknowledged events never arrived"
    assert result.duplicated == 0
    assert not result.unexpected
    assert set(result.stored) >= result.done
