"""The database schema (SQLAlchemy Core). Amounts are BIGINT nano-coins, times unix seconds."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    # web console sign-in (argon2id hash; NULL: token sign-in only) and the operator role
    Column("password_hash", String(255), nullable=True),
    Column("role", String(16), nullable=False, default="user", server_default="user"),
    CheckConstraint("role IN ('user', 'admin')", name="role"),
)

# web console sessions: the cookie holds a random id, the table its hash (a leaked database
# signs no one in); ``csrf`` is the token every form of the session must carry
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    # the API token it was started with (NULL: the password); it ends with that token
    Column("token_id", Integer, nullable=True, index=True),
    Column("csrf", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(8), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    # a renter's own key (create_api_key): its name, its scopes (NULL: every scope, as operator
    # issued tokens have), when it stops working, and its daily spend limit per currency
    Column("name", String(64), nullable=True),
    Column("scopes", String(64), nullable=True),
    Column("expires_at", BigInteger, nullable=True),
    Column("spend_limit", JSON, nullable=True),
)

servers = Table(
    "servers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("owner_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("init_token", String(48), nullable=False, unique=True),
    Column("agent_token_hash", String(64), nullable=True, unique=True),
    Column("connected", Boolean, nullable=False, default=False),
    Column("online", Boolean, nullable=False, default=False),
    Column("last_seen", BigInteger, nullable=True),
    Column("simulated", Boolean, nullable=False, default=False),
    Column("visibility", String(16), nullable=False, default="hidden"),
    Column("mrl_hours", Integer, nullable=False, default=72),
    Column("specs", JSON, nullable=True),
    Column("gpu_array", JSON, nullable=True),
    # what the agent says its GPUs allow (GigaSPOT settings): domain.gpu_settings
    Column("gpu_limits", JSON, nullable=True),
    Column("pub_cluster", JSON, nullable=True),
    Column("reliability", Double, nullable=False, default=1.0),
    Column("rating_avg", Double, nullable=False, default=0.0),
    Column("rating_cnt", Integer, nullable=False, default=0),
    Column("bg_image", String(512), nullable=True),
    Column("bg_command", Text, nullable=False, default=""),
    Column("bg_env", JSON, nullable=True),
    Column("bg_times_updated", Integer, nullable=False, default=0),
    # start of the current online stretch (reliability: closed stretches are in online_intervals)
    Column("online_since", BigInteger, nullable=True),
    Column("first_online_at", BigInteger, nullable=True),
    # set_server_settings usd_pricing {currency: {on_demand, spot}} (USD per day, decimal text)
    # and autoprice {currency: "usd" | false}: a currency priced "usd" follows the USD price
    Column("usd_pricing", JSON, nullable=True),
    Column("autoprice", JSON, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("removed_at", BigInteger, nullable=True),
    # the access gateway this server's agent tunnels through (None: ports published directly)
    Column("gateway", String(253), nullable=True),
    Column("tunnel_key", Text, nullable=True),  # the agent's SSH public key (OpenSSH format)
    # per-GPU rentals (SPEC §8): the host lets renters take some of its GPUs, at least min_gpus
    Column(
        "partial_gpu_rental", Boolean, nullable=False, default=False, server_default=text("false")
    ),
    Column("min_gpus", Integer, nullable=False, default=1, server_default="1"),
    Column("agent_protocol", Integer, nullable=True),  # the protocol its agent's hello named
    # storage (SPEC §8): the disk each rental gets, in GB (None: no disk offered, so no
    # disk_gb in create_order and no storage billed); prices per GB per day in server_prices
    Column("disk_gb", Integer, nullable=True),
    CheckConstraint("visibility IN ('public', 'hidden')", name="visibility"),
    CheckConstraint("disk_gb IS NULL OR disk_gb >= 1", name="disk_gb_positive"),
    CheckConstraint("min_gpus >= 1", name="min_gpus_positive"),
    CheckConstraint("mrl_hours > 0", name="mrl_positive"),
)
Index(
    "uq_servers_owner_name_live",
    servers.c.owner_id,
    servers.c.name,
    unique=True,
    sqlite_where=servers.c.removed_at.is_(None),
    postgresql_where=servers.c.removed_at.is_(None),
)

server_prices = Table(
    "server_prices",
    metadata,
    Column("server_id", Integer, ForeignKey("servers.id"), primary_key=True),
    Column("currency", String(32), primary_key=True),
    Column("on_demand", BigInteger, nullable=False, default=0),
    Column("spot", BigInteger, nullable=False, default=0),
    # set_server_settings enabled-<currency>: false stops renting in that currency
    Column("enabled", Boolean, nullable=False, default=True, server_default=text("true")),
    # per GB per day: what a stopped order's disk and a volume pay (SPEC §8)
    Column("storage", BigInteger, nullable=False, default=0, server_default="0"),
    CheckConstraint("on_demand >= 0 AND spot >= 0", name="prices_not_negative"),
    CheckConstraint("storage >= 0", name="storage_not_negative"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("server_id", Integer, ForeignKey("servers.id"), nullable=False, index=True),
    Column("spot", Boolean, nullable=False),
    Column("currency", String(32), nullable=False),
    Column("price", BigInteger, nullable=False),  # per day; the bid for spot orders
    Column("fee_bp", Integer, nullable=False),
    Column("creation_fee", BigInteger, nullable=False),
    Column("mrl", Integer, nullable=False),  # seconds
    Column("ct", BigInteger, nullable=False),
    Column("image", String(512), nullable=False),
    Column("command", Text, nullable=False, default=""),
    Column("env", JSON, nullable=False),
    Column("ports", JSON, nullable=False),
    Column("jupyter_token", String(32), nullable=True),
    Column("ssh_key", Text, nullable=True),
    Column("ssh_password", String(32), nullable=True),
    Column("autossh_entrypoint", Boolean, nullable=False, default=False),
    # running state: an order bills while ``running``; on-demand orders run from creation
    Column("running", Boolean, nullable=False, default=False),
    Column("expired", Boolean, nullable=False, default=False),
    Column("ended_at", BigInteger, nullable=True),
    Column("end_reason", String(32), nullable=True),
    Column("issue", Text, nullable=True),
    # billing state: spend = base_spend + floor(price × (active_seconds - base_seconds) / 86400)
    # whatever the settle cadence; a new bid price starts a new base (the seconds before it stay
    # billed at the price they ran at)
    Column("active_seconds", BigInteger, nullable=False, default=0),
    Column("base_seconds", BigInteger, nullable=False, default=0, server_default="0"),
    Column("base_spend", BigInteger, nullable=False, default=0, server_default="0"),
    Column("billed_at", BigInteger, nullable=True),  # start of the unbilled running interval
    Column("spend", BigInteger, nullable=False, default=0),
    Column("fee_paid", BigInteger, nullable=False, default=0),
    Column("last_lowered_at", BigInteger, nullable=True),
    # connection details reported by the host agent
    Column("tcp_ports", JSON, nullable=False),
    Column("pub_cluster", JSON, nullable=True),
    Column("http_port", String(8), nullable=True),
    # the unguessable first label of the order's http URLs (<label>-<port>.<http_domain>)
    Column("http_label", String(32), nullable=True, unique=True),
    Column("runtime_state", String(32), nullable=True),
    Column("runtime_error", Text, nullable=True),
    # the renter's score (cancel_order rating 1-5), once per order
    Column("rating", SmallInteger, nullable=True),
    # registry credentials for this order's pull only: cleared once the image is pulled
    Column("dockerhub_auth", Text, nullable=True),
    # GigaSPOT per-GPU settings [{pl, core_offset, mem_offset, core_lock, mem_lock}] and whether
    # the agent could apply them (None: not reported yet)
    Column("oc", JSON, nullable=True),
    Column("oc_failed", Boolean, nullable=True),
    # GPU slots (SPEC §8): how many the order asked for (None: the whole server), the explicit
    # indices it asked for (None: any), the indices it holds now ([] while not running) and since
    # when a bid has waited without slots (the starvation rule)
    Column("gpu_count", Integer, nullable=True),
    Column("gpus_wanted", JSON, nullable=True),
    Column("gpus", JSON, nullable=True),
    Column("waiting_since", BigInteger, nullable=True),
    # keeping work (SPEC §8): a stopped order holds no slot and keeps its disk, billed
    # storage_rate (disk_gb × the host's storage price, per day, fixed at creation) per second
    # from stored_at; why it stopped: "user" (stop_order), "timer" (stop_after) or "preempted"
    # (a spot order that lost its slots: it starts again by itself)
    Column("stopped", Boolean, nullable=False, default=False, server_default=text("false")),
    Column("stop_reason", String(16), nullable=True),
    Column("disk_gb", Integer, nullable=True),
    Column("storage_rate", BigInteger, nullable=False, default=0, server_default="0"),
    Column("stored_seconds", BigInteger, nullable=False, default=0, server_default="0"),
    Column("storage_spend", BigInteger, nullable=False, default=0, server_default="0"),
    Column("storage_fee", BigInteger, nullable=False, default=0, server_default="0"),
    Column("stored_at", BigInteger, nullable=True),  # start of the unbilled stopped interval
    Column("stop_at", BigInteger, nullable=True),  # create_order stop_after: stop at this second
    # restart_order asks (restart_requested grows), the agent reports (restart_done);
    # reset_order makes a new container from the image (generation grows)
    Column("restart_requested", Integer, nullable=False, default=0, server_default="0"),
    Column("restart_done", Integer, nullable=False, default=0, server_default="0"),
    Column("generation", Integer, nullable=False, default=0, server_default="0"),
    Column("mounts", JSON, nullable=True),  # {volume id: absolute path in the container}
    # the GPU slots a stopped per-GPU order last held: its kept container is described with
    # them, so that stopping does not change the container's shape
    Column("kept_gpus", JSON, nullable=True),
    # renters' own things (SPEC §8): the account's SSH keys as they were at creation (one per
    # line; the container gets them beside ssh_key) and the template the order was made from
    Column("account_keys", Text, nullable=True),
    Column("template_id", Integer, nullable=True),
    # the image its container was created from, as the agent reports it: the repository digest
    # ("repo@sha256:…") or the image id ("sha256:…") of an image without one (migration
    # image_digest)
    Column("image_digest", String(300), nullable=True),
    # the API key the order was created with (its spend limit bounds the order's billing)
    Column("api_key_id", Integer, nullable=True, index=True),
    # why stop_at is set: NULL (the renter's timer) or "spend_limit" (the key's daily cap)
    Column("timer_reason", String(16), nullable=True),
    CheckConstraint("price > 0", name="price_positive"),
    CheckConstraint(
        "storage_spend >= 0 AND storage_fee >= 0 AND storage_fee <= storage_spend",
        name="storage_sane",
    ),
    CheckConstraint("gpu_count IS NULL OR gpu_count >= 1", name="gpu_count_positive"),
    CheckConstraint("rating IS NULL OR (rating >= 1 AND rating <= 5)", name="rating_range"),
    CheckConstraint("spend >= 0 AND fee_paid >= 0 AND fee_paid <= spend", name="spend_sane"),
    # room on each page so the tick's billing updates stay heap-only (HOT) on PostgreSQL: each
    # running order is rewritten every tick, so its next version must fit beside it (migration
    # order_charges; the initial schema had 70, which left room for about 40 % of a page's rows)
    postgresql_with={"fillfactor": 45},
)
# The database itself guarantees one live on-demand order per server and one live bid per user
# and server, whatever the isolation level or the number of API processes.
Index(
    "uq_orders_on_demand_live",
    orders.c.server_id,
    unique=True,
    # whole-server on-demand orders; GPU-slot orders share a server (the server's row lock
    # keeps their slots apart, SPEC §8)
    sqlite_where=text("NOT spot AND NOT expired AND NOT stopped AND gpu_count IS NULL"),
    postgresql_where=text("NOT spot AND NOT expired AND NOT stopped AND gpu_count IS NULL"),
)
Index(
    "uq_orders_spot_live",
    orders.c.server_id,
    orders.c.user_id,
    unique=True,
    sqlite_where=text("spot AND NOT expired"),
    postgresql_where=text("spot AND NOT expired"),
)
Index(
    "ix_orders_live",
    orders.c.expired,
    orders.c.running,
)

# Renters' volumes (SPEC §8): kept by the agent of the server they live on, billed
# size_gb × the host's storage price per day (``rate``, fixed at creation) from creation to
# deletion, like an order's rent (seconds, spend, fee_paid, billed_at). state: "creating" (the
# agent has not reported it yet), "ready", "gone" (the agent reported it lost: billing stopped),
# "deleted" (by the renter), "ended" (its renter could not pay, or the server was removed).
volumes = Table(
    "volumes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("server_id", Integer, ForeignKey("servers.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("size_gb", Integer, nullable=False),
    Column("currency", String(32), nullable=False),
    Column("rate", BigInteger, nullable=False),
    Column("fee_bp", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("billed_at", BigInteger, nullable=True),
    Column("seconds", BigInteger, nullable=False, default=0),
    Column("spend", BigInteger, nullable=False, default=0),
    Column("fee_paid", BigInteger, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Column("ended_at", BigInteger, nullable=True),
    Column("quota", Boolean, nullable=True),  # the agent enforces size_gb (None: not reported)
    Column("error", Text, nullable=True),
    CheckConstraint("size_gb >= 1", name="size_positive"),
    CheckConstraint("spend >= 0 AND fee_paid >= 0 AND fee_paid <= spend", name="spend_sane"),
    CheckConstraint(
        "state IN ('creating', 'ready', 'gone', 'deleted', 'ended')", name="volume_state"
    ),
)

# Renters' own things (SPEC §8). An account's SSH keys: every new order's container gets them
# (orders.account_keys). public_key is the canonical "type base64 [comment]" line.
ssh_keys = Table(
    "ssh_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("bits", Integer, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("public_key", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("user_id", "fingerprint", name="uq_ssh_keys_user_fingerprint"),
)

# Templates: an image and its settings that create_order can start from (template_id); public
# ones are listed to everyone, private ones to their owner only.
templates = Table(
    "templates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("image", String(512), nullable=False),
    Column("command", Text, nullable=True),
    Column("env", JSON, nullable=True),
    Column("ports", JSON, nullable=True),
    Column("jupyter_token", String(32), nullable=True),
    Column("disk_gb", Integer, nullable=True),
    Column("public", Boolean, nullable=False, default=False),
    Column("readme", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
)

# Standing orders (SPEC §8): a renter's request to rent up to ``count`` servers (or ``gpu_count``
# GPUs each) matching ``query`` (marketplace filters) at or below ``max_price`` (units of
# ``currency`` per day) as soon as they appear. The engine fills the open ones in placement order
# (created_at, id) in the transaction that makes a server available; each fill is an ordinary
# order made from ``fields`` (create_order's fields). state: open, filled, cancelled, expired;
# last_error: why the last attempt could not fill it (not_enough_balance…).
standing_orders = Table(
    "standing_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("api_key_id", Integer, nullable=True),
    Column("query", JSON, nullable=False),
    Column("max_price", BigInteger, nullable=False),
    Column("currency", String(32), nullable=False),
    Column("gpu_count", Integer, nullable=True),
    Column("spot", Boolean, nullable=False),
    Column("template_id", Integer, nullable=True),
    Column("fields", JSON, nullable=False),  # the order fields (create_order's)
    Column("count", Integer, nullable=False),
    Column("filled", Integer, nullable=False, default=0),
    Column("expires_at", BigInteger, nullable=True),
    Column("state", String(16), nullable=False),
    Column("last_error", String(64), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("ended_at", BigInteger, nullable=True),
    CheckConstraint("count >= 1 AND filled >= 0 AND filled <= count", name="count_sane"),
    CheckConstraint("state IN ('open', 'filled', 'cancelled', 'expired')", name="standing_state"),
)
# the engine's one query when nothing is open: the open ones, in placement order
Index(
    "ix_standing_orders_open",
    standing_orders.c.state,
    standing_orders.c.created_at,
    standing_orders.c.id,
)

# Each fill of a standing order: the ordinary order it made
standing_order_fills = Table(
    "standing_order_fills",
    metadata,
    Column("order_id", Integer, ForeignKey("orders.id"), primary_key=True),
    Column(
        "standing_order_id",
        Integer,
        ForeignKey("standing_orders.id"),
        nullable=False,
        index=True,
    ),
    Column("server_id", Integer, nullable=False),
    Column("filled_at", BigInteger, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(96), nullable=False, unique=True),
    # wallet | platform | external; the operator's own accounts are 'platform' (fees under
    # ``platform:<currency>``, withdrawals awaiting payout under ``pending_withdrawals:<currency>``)
    Column("kind", String(16), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=True, index=True),
    Column("currency", String(32), nullable=False),
    Column("balance", BigInteger, nullable=False, default=0),
    Column("deposit_address", String(128), nullable=True, unique=True),
    CheckConstraint("kind IN ('wallet', 'platform', 'external')", name="kind"),
    # the external account is the world outside (deposits in, withdrawals out): its balance is
    # the negative of all the money inside; every other balance is never negative.
    CheckConstraint("kind = 'external' OR balance >= 0", name="balance_not_negative"),
)

transfers = Table(
    "transfers",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("key", String(128), nullable=False, unique=True),  # idempotency: applied exactly once
    Column("debit_account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("credit_account_id", Integer, ForeignKey("accounts.id"), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("order_id", Integer, nullable=True, index=True),
    Column("created_at", BigInteger, nullable=False),
    # why and by whom, where a person moved the money (operator refunds, adjustments, deposits)
    Column("memo", Text, nullable=True),
    Column("actor", String(64), nullable=True),
    CheckConstraint("amount > 0", name="amount_positive"),
    CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
)
# statements read one account's entries in id order, from either side
Index("ix_transfers_debit_account", transfers.c.debit_account_id, transfers.c.id)
Index("ix_transfers_credit_account", transfers.c.credit_account_id, transfers.c.id)

# The per-order split of the engine tick's rental transfers. The tick books rental once per
# (renter, host) and (renter, platform) pair (a ``spend`` or ``fee`` transfer without an order);
# each row here is one order's share of such a transfer, so statements still show rental per
# order: the shares of a transfer add up to its amount, to the unit. No foreign keys: the rows
# are written in the same statement batch as their transfer (and a per-row check would cost more
# than the booking), and nothing is ever deleted from either table.
order_charges = Table(
    "order_charges",
    metadata,
    Column("transfer_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("order_id", Integer, primary_key=True, index=True),
    Column("amount", BigInteger, nullable=False),
    CheckConstraint("amount > 0", name="amount_positive"),
)

withdrawals = Table(
    "withdrawals",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("currency", String(32), nullable=False),
    Column("amount", BigInteger, nullable=False),  # what the address receives
    Column("fee", BigInteger, nullable=False),  # kept by the platform on payout
    Column("address", String(128), nullable=False),
    Column("state", String(16), nullable=False),  # pending | approved | rejected
    Column("created_at", BigInteger, nullable=False),
    Column("decided_at", BigInteger, nullable=True),
    Column("decided_by", String(64), nullable=True),
    Column("txid", String(128), nullable=True),  # the payout's external transaction id
    Column("reason", Text, nullable=True),  # why it was rejected
    CheckConstraint("amount > 0 AND fee >= 0", name="amounts"),
    CheckConstraint("state IN ('pending', 'approved', 'rejected')", name="state"),
)
Index("ix_withdrawals_user", withdrawals.c.user_id, withdrawals.c.created_at)
Index("ix_withdrawals_state", withdrawals.c.state, withdrawals.c.id)

# Reliability: each closed stretch of a server's agent being online (the open one is
# servers.online_since .. servers.last_seen). Stretches older than the window are pruned.
online_intervals = Table(
    "online_intervals",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("server_id", Integer, ForeignKey("servers.id"), nullable=False, index=True),
    Column("started_at", BigInteger, nullable=False),
    Column("ended_at", BigInteger, nullable=False),
    CheckConstraint("ended_at >= started_at", name="ordered"),
)

# Operator-set exchange rates, nano-USD per whole coin (admin rates set): every replica reads
# them from here; they override the OPENCLORE_USD_RATES setting currency by currency.
usd_rates = Table(
    "usd_rates",
    metadata,
    Column("currency", String(32), primary_key=True),
    Column("rate", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint("rate > 0", name="rate_positive"),
)

rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("tat", Double, nullable=False),  # GCRA theoretical arrival time (unix seconds)
)

# The processes that decide rate limits on this database (store/ratelimit.py): each renews its
# row; one that finds itself alone decides in memory until ``solo_until`` (the database's clock)
rate_limit_members = Table(
    "rate_limit_members",
    metadata,
    Column("member", String(64), primary_key=True),
    Column("seen_until", Double, nullable=False),
    Column("solo_until", Double, nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", BigInteger, nullable=False, index=True),  # wall-clock unix seconds
    Column("actor", String(128), nullable=False),  # "user:12", "admin:alice", "agent:server:7"
    Column("user_id", Integer, nullable=True, index=True),  # the user the entry is about
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False, default=""),
    Column("detail", JSON, nullable=False),
    Column("source", String(256), nullable=False, default=""),  # client address, "cli@host"
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# ----------------------------------------------------------------------------- events (outbox)

# One row per market event, written in the transaction of the change (the outbox). Ids are given
# in commit order (see openclore.engine.outbox), so "everything after id N" never skips a row
# that commits late.
events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("type", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False),  # the market's time of the change
    Column("data", Text, nullable=False),  # the event's JSON object, rendered once (exact amounts)
)
Index("ix_events_user_id_id", events.c.user_id, events.c.id)
Index("ix_events_created_at", events.c.created_at)  # the retention purge

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("url", String(2048), nullable=False),
    Column("secret", String(80), nullable=False),
    Column("events", JSON, nullable=True),  # event types it wants; NULL: all
    Column("created_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
)

# One row per (event, webhook): created with the event (same transaction), claimed by one
# deliverer at a time (a lease in next_attempt_at), done when the receiver answered 2xx.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("webhook_id", Integer, ForeignKey("webhooks.id"), nullable=False),
    Column("event_id", BigInteger, nullable=True),  # NULL: a test ping
    Column("body", Text, nullable=False),  # the exact bytes POSTed (signed)
    Column("state", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Double, nullable=False),  # wall clock
    Column("last_attempt_at", Double, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", String(512), nullable=True),
    Column("delivered_at", Double, nullable=True),
    Column("created_at", Double, nullable=False),
    CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
)
Index(
    "ix_webhook_deliveries_due",
    webhook_deliveries.c.state,
    webhook_deliveries.c.next_attempt_at,
)
Index(
    "ix_webhook_deliveries_webhook_id_id", webhook_deliveries.c.webhook_id, webhook_deliveries.c.id
)

# Per-user alert settings: low balance when a wallet's runway drops under low_balance_seconds.
user_alerts = Table(
    "user_alerts",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("low_balance_seconds", BigInteger, nullable=False),
    Column("alerted", JSON, nullable=False),  # currencies alerted since their runway was fine
)

# ----------------------------------------------------------------------------- idempotency

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("endpoint", String(64), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("owner", String(32), nullable=False),  # the attempt that holds it now
    Column("state", String(16), nullable=False),  # running | done
    Column("status", Integer, nullable=True),  # HTTP status of the stored answer
    Column("response", Text, nullable=True),  # the answer's bytes, replayed as they were
    Column("started_at", Double, nullable=False),  # wall clock
    Column("created_at", Double, nullable=False),
    CheckConstraint("state IN ('running', 'done')", name="state"),
)
Index("ix_idempotency_keys_created_at", idempotency_keys.c.created_at)

# Access gateways: each public name is served by one gateway process at a time (it keeps its SSH
# host key here, so whichever process takes the name over keeps the identity agents trust).
gateways = Table(
    "gateways",
    metadata,
    Column("name", String(253), primary_key=True),  # the public name: the orders' pub_cluster
    Column("ssh_address", String(300), nullable=False),  # host:port agents dial
    Column("host_key", Text, nullable=False),  # private key, OpenSSH format
    Column("host_key_public", Text, nullable=False),
    Column("http_url", String(300), nullable=True),  # e.g. https://{order}-{port}.gw.example
    Column("seen_at", BigInteger, nullable=True),  # wall-clock heartbeat of the serving process
)

# Public TCP ports of rentals on their gateway: stable for the order's life, never shared.
tunnel_ports = Table(
    "tunnel_ports",
    metadata,
    Column("gateway", String(253), primary_key=True),
    Column("public_port", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False),
    Column("container_port", Integer, nullable=False),
    UniqueConstraint("order_id", "container_port", name="uq_tunnel_ports_order_port"),
)

# Questions the API asks a server's agent (an order's logs), answered through whichever process
# holds the agent's connection: the row is the mailbox between replicas.
agent_requests = Table(
    "agent_requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("server_id", Integer, ForeignKey("servers.id"), nullable=False, index=True),
    Column("order_id", Integer, nullable=False),
    Column("kind", String(16), nullable=False),  # logs
    Column("tail", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # wall clock
    Column("answered_at", BigInteger, nullable=True),
    Column("answer", JSON, nullable=True),
)
