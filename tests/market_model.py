"""A small reference model of the market, written from SPEC.md and not from the engine's code.

It knows, for one currency, every wallet's balance and every order's life: who holds each server at
each second (an online server runs its live on-demand order, else its highest bid, ties to the
earliest; a server rented per GPU (SPEC §8) runs its on-demand orders and then, by price per GPU,
every bid whose GPUs still fit), what each order spent (``floor(price × seconds / 86400)`` per
price it ran at, the platform's fee ``floor(spend × bp / 10000)`` from the total), when it ended
(cancelled, or at ``ct + mrl``, the next order starting at that very second), and which requests
the market must refuse and why.

The engine bills lazily (at ticks and when a request touches a server), so a few of its answers
depend on what it has already booked; the model follows that too: each server has a time up to
which the engine has settled it, and the balance the engine checks is the *booked* balance.

Keeping work (SPEC §8): an order the renter stops holds nothing and pays its storage rate
(``disk_gb`` × the host's storage price per day, fixed at creation) for every second it is
stopped, ``floor(rate × seconds / 86400)`` with its own fee; a spot order that loses its server
while the server is online is stopped the same way (``preempted``) but keeps bidding, and runs
again, without storage, when it wins. A start takes the order's GPUs again or is refused. Running
on-demand orders keep their GPUs before one that starts again.

A bid that waits longer than ``spot_starvation_seconds`` keeps lower bids off the GPUs it needs;
the model does not know that rule (tests/test_slots.py pins it): the simulation sets the setting
beyond its runs.

Standing orders (SPEC §8) have their own small model, :class:`StandingBook`: their priority
(placement order, each taking the cheapest available servers within its price) over direct
orders, for whole-server on-demand rentals.

The model is exact while no wallet runs dry: once a wallet falls under a minute of its orders'
spend, which order gets the last units depends on the order the engine settles servers in, and the
model stops predicting (``diverged``); the simulation then checks only its other invariants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY = 86_400
BASIS = 10_000


def spend_of(price: int, seconds: int) -> int:
    return price * seconds // DAY


@dataclass
class Segment:
    """The seconds an order ran at one price: booked by the engine, and in truth."""

    price: int
    booked: int = 0
    seconds: int = 0

    def spend(self) -> int:
        return spend_of(self.price, self.seconds)

    def booked_spend(self) -> int:
        return spend_of(self.price, self.booked)


@dataclass
class Order:
    id: int
    user: int
    server: int
    spot: bool
    ct: int
    mrl: int
    fee_bp: int
    creation_fee: int
    segments: list[Segment]
    ended_at: int | None = None
    end_reason: str | None = None
    last_lowered_at: int | None = None
    gpus: int | None = None  # GPUs asked for on a server rented per GPU; None: the whole server
    stored: Segment = field(default_factory=lambda: Segment(0))  # storage: rate per day
    stopped: str | None = None  # "user" (stop_order) | "preempted" (a spot order that lost)
    running: bool = False  # whether it held GPUs in the last second the model let pass

    @property
    def price(self) -> int:
        return self.segments[-1].price

    def spend(self) -> int:
        return sum(s.spend() for s in self.segments)

    def booked_spend(self) -> int:
        return sum(s.booked_spend() for s in self.segments)

    def seconds(self) -> int:
        return sum(s.seconds for s in self.segments)

    def fee(self) -> int:
        return self.spend() * self.fee_bp // BASIS

    def storage_fee(self) -> int:
        return self.stored.spend() * self.fee_bp // BASIS

    def booked_storage_fee(self) -> int:
        return self.stored.booked_spend() * self.fee_bp // BASIS


@dataclass
class Withdrawal:
    user: int
    amount: int
    fee: int
    state: str = "pending"


@dataclass
class Server:
    id: int
    owner: int
    online: bool
    public: bool
    mrl_hours: int
    on_demand: int
    min_spot: int
    settled_at: int  # the engine has brought this server's orders up to here
    gpus: int = 1  # its GPUs (slots)
    partial: bool = False  # renters may take some of them
    min_gpus: int = 1
    disk_gb: int = 0  # the disk each rental gets (0: none offered)
    storage: int = 0  # per GB per day

    def slots(self, order: Order) -> int:
        return self.gpus if order.gpus is None else order.gpus


@dataclass
class Rules:
    creation_fee_on_demand: int
    creation_fee_spot: int
    fee_on_demand_bp: int
    fee_spot_bp: int
    runway_seconds: int
    max_active_orders: int
    lowering_interval: int


@dataclass
class Model:
    rules: Rules
    now: int
    deposits: dict[int, int] = field(default_factory=dict)
    servers: dict[int, Server] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    withdrawals: dict[int, Withdrawal] = field(default_factory=dict)
    diverged: bool = False

    # ------------------------------------------------------------------ time

    def live(self, server: int, at: int | None = None) -> list[Order]:
        """Orders of a server that have not ended by ``at`` (default: now), in creation order."""
        at = self.now if at is None else at
        return sorted(
            (
                o
                for o in self.orders.values()
                if o.server == server and (o.ended_at is None or o.ended_at > at)
            ),
            key=lambda o: o.id,
        )

    def holders(self, server: int, at: int) -> list[Order]:
        """Who runs on the server during the second starting at ``at`` (SPEC §8): the live
        on-demand orders, then the bids from the highest price per GPU (ties: the earliest),
        each while its GPUs fit in what is left."""
        s = self.servers[server]
        if not s.online:
            return []
        live = [o for o in self.live(server, at) if o.ct <= at and o.stopped != "user"]
        out: list[Order] = []
        free = s.gpus
        # running on-demand orders keep their GPUs, then one that starts again if it fits
        for o in sorted((o for o in live if not o.spot), key=lambda o: (not o.running, o.id)):
            if s.slots(o) <= free:
                out.append(o)
                free -= s.slots(o)
        bids = [o for o in live if o.spot]
        # price per GPU, highest first, compared exactly: a/k > b/j <=> a*j > b*k
        for _ in range(len(bids)):
            best = bids[0]
            for o in bids[1:]:
                mine, theirs = o.price * s.slots(best), best.price * s.slots(o)
                if mine > theirs or (mine == theirs and o.id < best.id):
                    best = o
            bids.remove(best)
            if s.slots(best) <= free:
                out.append(best)
                free -= s.slots(best)
        return sorted(out, key=lambda o: o.id)

    def advance(self, now: int) -> None:
        """Let time pass: holders run, orders reach their end of life on the second they do."""
        t = self.now
        while t < now:
            ends = [
                o.ct + o.mrl
                for o in self.orders.values()
                if o.ended_at is None and t < o.ct + o.mrl <= now
            ]
            stop = min(ends, default=now)
            for server in self.servers:
                self._transitions(server, t)
                for holder in self.holders(server, t):
                    holder.segments[-1].seconds += stop - t
            for o in self.orders.values():
                if o.ended_at is None and o.stopped is not None:
                    o.stored.seconds += stop - t
                if o.ended_at is None and o.ct + o.mrl == stop:
                    o.ended_at, o.end_reason = stop, "expired"
            t = stop
        self.now = now
        self._check_runway()

    def _transitions(self, server: int, at: int) -> None:
        """Who starts and stops running at ``at``: a spot order that loses its GPUs on an
        online server is stopped (preempted), one that wins them again is not."""
        holders = {o.id for o in self.holders(server, at)}
        online = self.servers[server].online
        for o in self.live(server, at):
            if o.ct > at:
                continue
            runs = o.id in holders
            if o.running and not runs and o.spot and online:
                o.stopped = "preempted"
            if runs and o.stopped == "preempted":
                o.stopped = None
            o.running = runs

    def _check_runway(self) -> None:
        """Past this point who gets a wallet's last units depends on settling order: stop."""
        for user in self.deposits:
            minute = sum(
                spend_of(o.price + o.stored.price, 60) + 2
                for o in self.orders.values()
                if o.user == user and o.ended_at is None
            )
            if self.balance(user) < minute:
                self.diverged = True

    def settle(self, server: int) -> None:
        """The engine has just brought this server up to now (and given its GPUs to whom the
        rules give them now)."""
        self._transitions(server, self.now)
        self.servers[server].settled_at = self.now
        for o in self.orders.values():
            if o.server == server:
                for s in [*o.segments, o.stored]:
                    s.booked = s.seconds

    def settle_all(self) -> None:
        for server in self.servers:
            self.settle(server)

    # ------------------------------------------------------------------ money

    def withdrawn(self, user: int) -> int:
        """What the user's withdrawals hold: amount and fee from the request on, given back
        when the operator rejects it."""
        return sum(
            w.amount + w.fee
            for w in self.withdrawals.values()
            if w.user == user and w.state != "rejected"
        )

    def pending_withdrawals(self) -> int:
        return sum(w.amount + w.fee for w in self.withdrawals.values() if w.state == "pending")

    def balance(self, user: int) -> int:
        """The wallet in truth: deposits (refunds included) and earnings less creation fees,
        spend and withdrawals."""
        out = self.deposits.get(user, 0) - self.withdrawn(user)
        for o in self.orders.values():
            if o.user == user:
                out -= o.creation_fee + o.spend() + o.stored.spend()
            if self.servers[o.server].owner == user:
                out += o.spend() - o.fee() + o.stored.spend() - o.storage_fee()
        return out

    def booked_balance(self, user: int) -> int:
        """The wallet as the engine has booked it so far."""
        out = self.deposits.get(user, 0) - self.withdrawn(user)
        for o in self.orders.values():
            booked = o.booked_spend()
            stored = o.stored.booked_spend()
            if o.user == user:
                out -= o.creation_fee + booked + stored
            if self.servers[o.server].owner == user:
                out += booked - booked * o.fee_bp // BASIS + stored - o.booked_storage_fee()
        return out

    def visibly_live(self, order: Order) -> bool:
        """Live as the engine sees it before settling: an end it has not booked yet is unseen."""
        if order.ended_at is None:
            return True
        if order.end_reason == "expired":
            return order.ended_at > self.servers[order.server].settled_at
        return False

    # ------------------------------------------------------------------ requests

    def deposit(self, user: int, amount: int) -> None:
        self.deposits[user] = self.deposits.get(user, 0) + amount

    def withdraw(self, user: int, amount: int, fee: int) -> str | None:
        """The error a withdrawal request must answer, or None (then :meth:`requested`).
        It takes from the booked balance, as a new order's runway check does."""
        if self.booked_balance(user) < amount + fee:
            return "not_enough_balance"
        return None

    def requested(self, withdrawal_id: int, user: int, amount: int, fee: int) -> None:
        self.withdrawals[withdrawal_id] = Withdrawal(user, amount, fee)
        self._check_runway()

    def decide(self, withdrawal_id: int, approve: bool) -> str | None:
        """The operator approves (paid out) or rejects (money back) a withdrawal; only a
        pending one can be decided."""
        w = self.withdrawals[withdrawal_id]
        if w.state != "pending":
            return "withdrawal_not_pending"
        w.state = "approved" if approve else "rejected"
        return None

    @staticmethod
    def asked(server: Server, gpus: int | None) -> int | None:
        """The GPUs an order holds: None (the whole server) when it asks for none or all."""
        return None if gpus is None or gpus == server.gpus else gpus

    def create(
        self, user: int, server_id: int, spot: bool, bid: int, gpus: int | None = None
    ) -> str | None:
        """The error create_order must answer, or None (then :meth:`created` follows)."""
        server = self.servers[server_id]
        if server.owner == user:
            return "cant_rent_from_yourself"
        if not server.public:
            return "server-dont-exist"
        if not server.online:
            return "server-offline"
        k = self.asked(server, gpus)
        if k is not None and not server.partial:
            return "partial_gpu_rental_off"
        if k is not None and not server.min_gpus <= k <= server.gpus:
            return "gpu_count_out_of_range"
        want = server.gpus if k is None else k
        seen = [o for o in self.orders.values() if o.server == server_id and self.visibly_live(o)]
        if spot:
            if server.min_spot <= 0:
                return "currency-not-allowed"
            if bid * server.gpus < server.min_spot * want:  # per GPU against the minimum ÷ n
                return "too_low_price"
            if any(o.spot and o.user == user for o in seen):
                return "you_already_have_spot_order"
            price, fee = bid, self.rules.creation_fee_spot
        else:
            price = server.on_demand * want // server.gpus
            if price <= 0:
                return "currency-not-allowed"
            held = sum(server.slots(o) for o in seen if not o.spot and o.stopped != "user")
            if (k is None and held) or held + want > server.gpus:
                return "server-already-rented"
            fee = self.rules.creation_fee_on_demand
        active = sum(1 for o in self.orders.values() if o.user == user and self.visibly_live(o))
        if active >= self.rules.max_active_orders:
            return "order_limit_reached"
        if self.booked_balance(user) < fee + price * self.rules.runway_seconds // DAY:
            return "not_enough_balance"
        return None

    def created(
        self,
        order_id: int,
        user: int,
        server_id: int,
        spot: bool,
        bid: int,
        gpus: int | None = None,
    ) -> None:
        server = self.servers[server_id]
        k = self.asked(server, gpus)
        on_demand = server.on_demand * (server.gpus if k is None else k) // server.gpus
        disk = server.disk_gb if k is None else max(1, server.disk_gb * k // server.gpus)
        self.orders[order_id] = Order(
            id=order_id,
            user=user,
            server=server_id,
            spot=spot,
            ct=self.now,
            mrl=server.mrl_hours * 3600,
            fee_bp=self.rules.fee_spot_bp if spot else self.rules.fee_on_demand_bp,
            creation_fee=self.rules.creation_fee_spot
            if spot
            else self.rules.creation_fee_on_demand,
            segments=[Segment(bid if spot else on_demand)],
            gpus=k,
            stored=Segment(disk * server.storage if server.disk_gb else 0),
        )
        self.settle(server_id)

    def stop(self, order_id: int) -> str | None:
        """stop_order: the error it must answer, or None (then it is stopped)."""
        order = self.orders[order_id]
        if order.ended_at is not None:
            return "order_not_active"
        if order.stopped is not None:
            return "order_already_stopped"
        if order.spot and not order.running:
            return "order_not_running"
        order.stopped, order.running = "user", False
        self.settle(order.server)
        return None

    def start(self, order_id: int) -> str | None:
        """start_order: the error it must answer, or None (then it runs again)."""
        order = self.orders[order_id]
        server = self.servers[order.server]
        if order.ended_at is not None:
            return "order_not_active"
        if order.stopped is None:
            return "order_not_stopped"
        if not server.online:
            return "server-offline"
        # the engine brings the server up to now first: its booked balance is then the truth
        # for this server's orders
        booked = {id(s): s.booked for o in self.live(order.server) for s in [*o.segments, o.stored]}
        for o in self.live(order.server):
            for seg in [*o.segments, o.stored]:
                seg.booked = seg.seconds
        refused: str | None = None
        if self.booked_balance(order.user) < order.price * self.rules.runway_seconds // DAY:
            refused = "not_enough_balance"
        elif (
            not order.spot
            and order.gpus is None
            and any(
                not o.spot and o.stopped is None and o.id != order_id
                for o in self.live(order.server)
            )
        ):
            refused = "gpus_not_free"
        else:
            before = order.stopped
            order.stopped = "preempted" if order.spot else None
            if order.id not in {o.id for o in self.holders(order.server, self.now)}:
                order.stopped, refused = before, "gpus_not_free"
        if refused is not None:  # rolled back: nothing was booked
            for o in self.live(order.server):
                for seg in [*o.segments, o.stored]:
                    seg.booked = booked[id(seg)]
            return refused
        self.settle(order.server)
        return None

    def cancel(self, order_id: int) -> str | None:
        order = self.orders[order_id]
        if not self.visibly_live(order):
            return "order_not_active"
        if order.ended_at is None:
            order.ended_at, order.end_reason = self.now, "cancelled"
        self.settle(order.server)
        return None

    def bid(self, order_id: int, desired: int) -> str | None:
        order = self.orders[order_id]
        if not order.spot or not self.visibly_live(order):
            return "order_dont_exist"
        current = order.price
        server = self.servers[order.server]
        # a bid for some GPUs: the server's minimum for those GPUs, rounded up (SPEC §8)
        least = server.min_spot
        if order.gpus is not None:
            least = -(-server.min_spot * order.gpus // server.gpus)
        if desired > current:
            if self.booked_balance(order.user) < desired * self.rules.runway_seconds // DAY:
                return "not_enough_balance"
        elif desired < current:
            last = order.last_lowered_at
            if last is not None and self.now - last < self.rules.lowering_interval:
                return "can_lower_every_600_seconds"
            if desired < least:
                return "amount_too_low"
            if desired < max(current - max(least, 1), least):
                return "exceeded_max_step"
        if desired == current:
            return None
        self.settle(order.server)
        if order.ended_at is not None:  # it ran out while being settled: nothing to re-price
            return None
        if desired < current:
            order.last_lowered_at = self.now
        order.segments.append(Segment(desired))
        return None

    def set_online(self, server: int, online: bool) -> None:
        self.servers[server].online = online
        self.settle(server)

    def change_settings(
        self, server: int, public: bool, mrl_hours: int, on_demand: int, min_spot: int
    ) -> None:
        s = self.servers[server]
        s.public, s.mrl_hours, s.on_demand, s.min_spot = public, mrl_hours, on_demand, min_spot
        self.settle(server)

    # ------------------------------------------------------------------ what the engine shows

    def running(self, server: int) -> list[int]:
        """The ids of the orders that run on the server now, ascending."""
        return [o.id for o in self.holders(server, self.now)]


# ---------------------------------------------------------------------- standing orders (SPEC §8)


@dataclass
class Standing:
    id: int
    user: int
    max_price: int  # per day, whole-server on demand
    count: int
    filled: int = 0
    state: str = "open"  # open, filled, cancelled


@dataclass
class StandingBook:
    """Who holds each (one-GPU, whole-server, on-demand) server when standing orders compete
    with direct orders, from SPEC §8 alone: whenever servers become available (come online, or
    their order ends) the open standing orders, in placement order, each take the cheapest
    available servers at or below their price (ties: lowest id) up to their count, before anyone
    else can see the servers; a direct order gets a server only if no standing order took it.
    Placing a standing order fills it at once from what is available then."""

    prices: dict[int, int] = field(default_factory=dict)  # server -> on-demand price per day
    online: set[int] = field(default_factory=set)
    holder: dict[int, int] = field(default_factory=dict)  # server -> user holding it
    book: list[Standing] = field(default_factory=list)  # in placement order

    def available(self) -> list[int]:
        return sorted(
            (s for s in self.online if s not in self.holder), key=lambda s: (self.prices[s], s)
        )

    def match(self) -> None:
        for so in self.book:
            if so.state != "open":
                continue
            for server in self.available():
                if so.filled >= so.count:
                    break
                if self.prices[server] <= so.max_price:
                    self.holder[server] = so.user
                    so.filled += 1
            if so.filled >= so.count:
                so.state = "filled"

    def place(self, standing_id: int, user: int, max_price: int, count: int) -> None:
        self.book.append(Standing(standing_id, user, max_price, count))
        self.match()

    def cancel(self, standing_id: int) -> bool:
        """Whether the cancel succeeds (only an open one can be cancelled)."""
        so = next(s for s in self.book if s.id == standing_id)
        if so.state != "open":
            return False
        so.state = "cancelled"
        return True

    def come_online(self, servers: list[int]) -> None:
        self.online.update(servers)
        self.match()

    def direct(self, server: int, user: int) -> bool:
        """A direct create_order: it gets the server only if it is online and nobody holds it."""
        if server not in self.online or server in self.holder:
            return False
        self.holder[server] = user
        self.match()  # changes the listing: the engine matches (nothing changes for it)
        return True

    def end(self, server: int) -> None:
        """The server's order ends (cancelled): the server is available again."""
        del self.holder[server]
        self.match()
