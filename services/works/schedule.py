"""When a work is due: run frequencies and cron expressions with a time zone, as pure functions.

    once              as soon as the work is created and active
    hourly            at the top of every hour (UTC)
    daily             at 00:00 UTC
    weekly            on Monday at 00:00 UTC
    <cron>            five fields (minute precision) or six (seconds last), in UTC
    CRON_TZ=<zone> <cron>   the same in an IANA time zone: a time in a daylight-saving gap runs
                      once, shifted by the gap (02:30 -> 03:30); a repeated hour runs once
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

NAMED = {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 1"}
MAX_CATCHUP = 100  # never more runs than this for one catch-up


class ScheduleError(ValueError):
    """A run_frequency that cannot be understood."""


@dataclass(frozen=True)
class Schedule:
    expression: str | None  # None: once
    zone: ZoneInfo | None

    def next_after(self, moment: datetime) -> datetime | None:
        """The first due time strictly after `moment` (None for `once`)."""
        if self.expression is None:
            return None
        zone = self.zone or UTC
        # Walk wall-clock times without an offset, then place each in the zone: croniter's own
        # tz-aware arithmetic keeps the old offset after a daylight-saving change.
        wall = croniter(self.expression, moment.astimezone(zone).replace(tzinfo=None))
        while True:
            candidate: datetime = wall.get_next(datetime).replace(tzinfo=zone).astimezone(UTC)
            if candidate > moment:  # a repeated hour's second pass is not a new due time
                return candidate

    def between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Due times in [start, end], in order."""
        if self.expression is None:
            return
        moment = self.next_after(start - timedelta(microseconds=1))
        while moment is not None and moment <= end:
            yield moment
            moment = self.next_after(moment)


def parse(frequency: str | None) -> Schedule | None:
    """None when the work is never scheduled (no run_frequency: run it by hand)."""
    if frequency is None or not frequency.strip():
        return None
    text = frequency.strip()
    if text.lower() == "once":
        return Schedule(None, None)
    if text.lower() in NAMED:
        return Schedule(NAMED[text.lower()], None)
    zone = None
    if text.startswith(("CRON_TZ=", "TZ=")):
        head, _, text = text.partition(" ")
        try:
            zone = ZoneInfo(head.split("=", 1)[1])
        except (ZoneInfoNotFoundError, ValueError):
            raise ScheduleError(f"unknown time zone {head.split('=', 1)[1]!r}") from None
        text = text.strip()
    fields = text.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(text):
        raise ScheduleError(
            f"run_frequency {frequency!r} is not once, hourly, daily, weekly or a cron expression "
            "(5 fields, or 6 with seconds last; optional 'CRON_TZ=Europe/Paris ' prefix)"
        )
    return Schedule(text, zone)
