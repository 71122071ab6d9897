"""Reliability: how much of the last 30 days a server's agent was online, with a prior.

``reliability = (online + PRIOR × PRIOR_SECONDS) / (observed + PRIOR_SECONDS)`` where ``observed``
is the part of the window since the server first came online and ``online`` the seconds of it its
agent was online (heartbeats within the agent timeout). A server that has never been online reads
``PRIOR`` (0.9), not 1.0: a new machine has shown nothing yet. The prior weighs as much as three
days of observation, so it fades as the server builds a record (after 30 days it is a tenth of
the weight): a new server that stays online climbs from 0.9 towards 1, one that drops out falls.
"""

from __future__ import annotations

WINDOW_SECONDS = 30 * 86_400
PRIOR = 0.9
PRIOR_SECONDS = 3 * 86_400


def reliability(online_seconds: int, observed_seconds: int) -> float:
    """The shown value (0–1, four decimals) from the online and observed seconds of the window."""
    observed = max(0, min(observed_seconds, WINDOW_SECONDS))
    online = max(0, min(online_seconds, observed))
    value = (online + PRIOR * PRIOR_SECONDS) / (observed + PRIOR_SECONDS)
    return round(min(1.0, max(0.0, value)), 4)


def overlap(start: int, end: int, window_start: int, window_end: int) -> int:
    """Seconds of ``[start, end]`` inside ``[window_start, window_end]``."""
    return max(0, min(end, window_end) - max(start, window_start))
