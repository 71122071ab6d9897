"""Which writes change what the marketplace listing shows: the one place that knows.

Every process caches the serialized listing (and each user's own server ids) keyed by the
``market_version`` counter (:mod:`openclore.store.freshness`). Rather than each use case
remembering to move the counter, :class:`openclore.store.db.Database` watches the statements a
write transaction sends and moves it once, just before the commit, when one of them wrote what
the listing is made of. A use case added later cannot forget it. The same moment runs the
database's ``listing_hooks``: the engine's standing-order match (SPEC §8) sees every
transaction that may have made a server or GPU slots available, before it commits.

The rule errs one way only: a statement it cannot read closely (a multi-table ``UPDATE … FROM``,
an ``INSERT`` or ``DELETE`` on a listed table) counts as a change. A missed change would leave
every replica serving a stale listing; an extra one costs one rebuild.
"""

from __future__ import annotations

import re

# table → the columns a listing shows or filters on (None: any change to the table)
LISTED: dict[str, frozenset[str] | None] = {
    "servers": frozenset(
        {
            "owner_id",
            "online",
            "visibility",
            "removed_at",
            "mrl_hours",
            "specs",
            "gpu_array",
            "gpu_limits",
            "reliability",
            "rating_avg",
            "rating_cnt",
            "usd_pricing",
            "partial_gpu_rental",
            "min_gpus",
            "agent_protocol",  # whether it may be rented per GPU
            "disk_gb",  # its storage offer
            "simulated",
        }
    ),
    "server_prices": None,
    "usd_rates": None,
    # orders: whether a server is rented (and GigaSPOT's bids), not what an order has spent
    "orders": frozenset(
        {
            "user_id",
            "server_id",
            "spot",
            "expired",
            "running",
            "stopped",
            "price",
            "currency",
            "oc",
            "gpus",
        }
    ),
}

_WRITES = ("INSERT", "UPDATE", "DELETE", "WITH", "TRUNCA")
_NAMES = "|".join(LISTED)
_TABLE_WRITE = re.compile(
    rf"\b(?:(?:INSERT\s+INTO|DELETE\s+FROM|TRUNCATE)\s+(?:\w+\s*,\s*)*(?:{_NAMES})\b"
    rf"|UPDATE\s+(?P<updated>{_NAMES})\s+SET\b)",
    re.IGNORECASE,
)
# ``name =`` at the start of an assignment (not ``table.name =`` of a WHERE clause)
_ASSIGNED = re.compile(r"(?<![.\w])(\w+)\s*=")


def touches_listing(statement: str) -> bool:
    """Whether one SQL statement, as sent to the database, may change the listing."""
    if not statement.lstrip()[:6].upper().startswith(_WRITES):
        return False
    for found in _TABLE_WRITE.finditer(statement):
        updated = found.group("updated")
        if updated is None:  # an INSERT, a DELETE or a TRUNCATE of a listed table
            return True
        columns = LISTED[updated.lower()]
        if columns is None:
            return True
        # the assignments after SET (and whatever follows: reading too much only adds names)
        assigned = {name.lower() for name in _ASSIGNED.findall(statement, found.end())}
        if assigned & columns or not assigned:
            return True
    return False
