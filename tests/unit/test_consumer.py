"""The acking consumer commits a partition up to its first task not acknowledged yet."""

from __future__ import annotations

from services.consumer import _Acks


def test_commits_stop_at_the_first_unacknowledged_offset() -> None:
    acks = _Acks()
    assert acks.committable() is None
    acks.received.extend([5, 6, 7, 9])  # 8 missing: offsets may have gaps
    acks.ack(6)
    acks.ack(9)
    assert acks.committable() == 5
    acks.ack(5)
    assert acks.committable() == 7
    acks.ack(7)
    assert acks.committable() == 10 and not acks.received and not acks.acked
