"""The Vast offers of a listed server (market/vast_offers.py) with every field written out, and
the query's parsing, filtering and ordering at their edges. Pure functions: no database.

Written to kill the mutants `scripts/mutation vast_offers` found alive: offer fields no other
test read, the GPU counts a partial server offers, the free-slot rule, the currency picked, the
disk, CUDA and thread parsing, and the query's limits and error messages.

Prices are chosen so that every USD figure is exact in a float: bitcoin at $60,000, the server
at 0.0008 BTC a day ($48 a day, $2 an hour for its four GPUs), a minimum bid of half that."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from openclore.domain.errors import InvalidInput
from openclore.domain.money import Coins
from openclore.domain.usd import NANO
from openclore.market.vast_offers import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    OfferQuery,
    matches,
    parse_filters,
    parse_offer_query,
    pick_currency,
    search_offers,
    server_facts,
    server_offers,
    short_gpu_name,
    sort_rows,
    split_offer_id,
    threads_of,
    units_per_day,
    usd_per_hour,
)

pytestmark = pytest.mark.origin("mutant")

RATES = {"bitcoin": 60_000 * NANO, "CLORE-Blockchain": NANO // 20}  # $60,000 and $0.05
NOW = 1_000_000


def listed(**changes: Any) -> dict[str, Any]:
    """A listed server as the marketplace shows it: four RTX 4090, three of them free."""
    item: dict[str, Any] = {
        "id": 7,
        "owner": 3,
        "gpu_array": ["NVIDIA GeForce RTX 4090"] * 4,
        "specs": {
            "cpu": "AMD EPYC 7543",
            "cpus": "32/64",
            "ram": 128.5,
            "mb": "ASUS KRPA-U16",
            "disk": "NVMe 2 TB",
            "disk_speed": 3000,
            "net": {"up": 900, "down": 950, "cc": "CZ"},
            "gpuram": 24,
            "pcie_rev": 4,
            "nvidia_driver": "550.54",
            "cuda_version": "12.4",
        },
        "reliability": 0.99,
        "price": {
            # CLORE is dearer in USD ($100 a day), so bitcoin is the offer's currency
            "on_demand": {"bitcoin": Coins(800_000), "CLORE-Blockchain": Coins(2_000 * NANO)},
            "spot": {"bitcoin": Coins(400_000), "CLORE-Blockchain": Coins(1_000 * NANO)},
        },
        "partial_gpu_rental": {"enabled": True, "min_gpus": 2, "free_indices": [0, 1, 2]},
        "storage": {"price_per_gb_day": {"bitcoin": Coins(10_000)}},  # $0.60 a GB-day
        "mrl": 72,
        "rented": False,
    }
    item.update(changes)
    return item


FACTS = {
    "machine_id": 7,
    "host_id": 3,
    "gpu_name": "RTX 4090",
    "gpu_ram": 24_000,
    "cpu_name": "AMD EPYC 7543",
    "cpu_ram": 128_500,
    "mobo_name": "ASUS KRPA-U16",
    "disk_name": "NVMe 2 TB",
    "disk_bw": 3000,
    "inet_up": 900,
    "inet_down": 950,
    "geolocation": "CZ",
    "cuda_max_good": 12.4,
    "driver_version": "550.54",
    "pci_gen": 4,
    "reliability": 0.99,
    "reliability2": 0.99,
    "verified": True,
    "verification": "verified",
    "external": False,
}


def offer(k: int, **fields: Any) -> dict[str, Any]:
    """The on-demand offer of ``k`` of the four GPUs, as written out by hand."""
    dph = {2: 1.0, 3: 1.5, 4: 2.0}[k]
    expected = {
        **FACTS,
        "id": 700 + k,
        "ask_contract_id": 700 + k,
        "bundle_id": 700 + k,
        "num_gpus": k,
        "gpu_frac": k / 4,
        "gpu_total_ram": 24_000 * k,
        "cpu_cores": 64,
        "cpu_cores_effective": 16.0 * k,
        "disk_space": 500.0 * k,
        "dph_base": dph,
        "dph_total": dph,
        "min_bid": {2: 0.5, 3: 0.75, 4: 1.0}[k],
        "storage_cost": 18.0,
        "inet_up_cost": 0.0,
        "inet_down_cost": 0.0,
        "duration": 259_200.0,
        "end_date": NOW + 259_200,
        "direct_port_count": 5,
        "rentable": k <= 3,
        "rented": k > 3,
        "is_bid": False,
        "score": {2: 1.98, 3: 2.97, 4: 3.96}[k],
        "search": {
            "gpuCostPerHour": dph,
            "diskHour": 0.0,
            "totalHour": dph,
            "discountTotalHour": 0.0,
            "discountedTotalPerHour": dph,
        },
        "hosting_type": 0,
        "currency": "bitcoin",
    }
    expected.update(fields)
    return expected


# ------------------------------------------------------------------------------ the offers


def test_a_partial_server_offers_each_count_from_its_minimum_with_every_field() -> None:
    assert server_offers(listed(), RATES, OfferQuery(), NOW) == [offer(2), offer(3), offer(4)]


def test_interruptible_offers_are_priced_at_the_minimum_bid_and_always_rentable() -> None:
    got = server_offers(listed(), RATES, OfferQuery(bid=True), NOW)
    bids = {2: 0.5, 3: 0.75, 4: 1.0}
    expected = [
        offer(
            k,
            dph_base=bids[k],
            dph_total=bids[k],
            rentable=True,
            is_bid=True,
            search={
                "gpuCostPerHour": bids[k],
                "diskHour": 0.0,
                "totalHour": bids[k],
                "discountTotalHour": 0.0,
                "discountedTotalPerHour": bids[k],
            },
        )
        for k in (2, 3, 4)
    ]
    assert got == expected


def test_a_server_rented_whole_has_one_offer_of_all_its_gpus() -> None:
    item = listed(partial_gpu_rental={"enabled": False, "min_gpus": 1, "free_indices": [0, 1]})
    (only,) = server_offers(item, RATES, OfferQuery(), NOW)
    assert (only["id"], only["num_gpus"], only["gpu_frac"], only["disk_space"]) == (
        704,
        4,
        1.0,
        2000.0,
    )
    assert (only["rentable"], only["rented"]) == (False, True)  # two of four are free
    item["partial_gpu_rental"]["free_indices"] = [0, 1, 2, 3]
    (only,) = server_offers(item, RATES, OfferQuery(), NOW)
    assert (only["rentable"], only["rented"]) == (True, False)


def test_a_one_gpu_server_offers_one_gpu_even_with_partial_rental_on() -> None:
    item = listed(
        gpu_array=["NVIDIA GeForce RTX 4090"],
        partial_gpu_rental={"enabled": True, "min_gpus": 1, "free_indices": [0]},
    )
    assert [o["num_gpus"] for o in server_offers(item, RATES, OfferQuery(), NOW)] == [1]


def test_the_minimum_gpu_count_is_at_least_one() -> None:
    item = listed(partial_gpu_rental={"enabled": True, "min_gpus": 0, "free_indices": []})
    got = server_offers(item, RATES, OfferQuery(), NOW)
    assert [o["num_gpus"] for o in got] == [1, 2, 3, 4]
    assert [o["rented"] for o in got] == [True] * 4  # no GPU is free
    item["partial_gpu_rental"]["min_gpus"] = None
    assert [o["num_gpus"] for o in server_offers(item, RATES, OfferQuery(), NOW)] == [1, 2, 3, 4]


def test_a_server_without_gpus_is_free_unless_rented() -> None:
    item = listed(gpu_array=[], partial_gpu_rental={})
    (only,) = server_offers(item, RATES, OfferQuery(), NOW)
    assert (only["num_gpus"], only["gpu_frac"], only["gpu_name"]) == (0, 1.0, None)
    assert (only["rentable"], only["rented"], only["score"]) == (True, False, 0.0)
    item["rented"] = True
    (only,) = server_offers(item, RATES, OfferQuery(), NOW)
    assert (only["rentable"], only["rented"]) == (False, True)


def test_a_spot_minimum_of_zero_has_no_min_bid_and_no_interruptible_offer() -> None:
    item = listed(price={"on_demand": {"bitcoin": Coins(800_000)}, "spot": {}})
    assert [o["min_bid"] for o in server_offers(item, RATES, OfferQuery(), NOW)] == [None] * 3
    assert server_offers(item, RATES, OfferQuery(bid=True), NOW) == []


def test_no_on_demand_price_no_on_demand_offer() -> None:
    item = listed(price={"on_demand": {}, "spot": {"bitcoin": Coins(400_000)}})
    assert server_offers(item, RATES, OfferQuery(), NOW) == []
    assert len(server_offers(item, RATES, OfferQuery(bid=True), NOW)) == 3


def test_a_server_none_of_whose_currencies_has_a_rate_is_not_offered() -> None:
    assert server_offers(listed(), {"USD-Blockchain": NANO}, OfferQuery(), NOW) == []
    assert server_offers(listed(price=None), RATES, OfferQuery(), NOW) == []


def test_what_a_server_does_not_say_is_null_in_its_offer() -> None:
    item = listed(specs={}, storage=None, mrl=None, reliability=None, owner=None)
    got = server_offers(item, RATES, OfferQuery(), NOW)[0]
    for name in ("gpu_ram", "gpu_total_ram", "cpu_ram", "cpu_cores", "cpu_cores_effective"):
        assert got[name] is None, name
    assert (got["disk_space"], got["cuda_max_good"], got["geolocation"]) == (None, None, None)
    assert (got["storage_cost"], got["duration"], got["end_date"]) == (0.0, 0.0, NOW)
    assert (got["score"], got["host_id"]) == (0.0, None)


def test_the_disk_is_the_storage_offered_or_else_read_from_the_specs() -> None:
    def disk(**changes: Any) -> Any:
        return server_offers(listed(**changes), RATES, OfferQuery(), NOW)[-1]["disk_space"]

    assert disk(storage={"disk_gb": 250}) == 250.0
    assert disk(storage={"disk_gb": None}) == 2000.0
    specs = dict(listed()["specs"])
    assert disk(specs={**specs, "disk": "SATA 512GB"}) == 512.0
    assert disk(specs={**specs, "disk": "1.5 tb nvme"}) == 1500.0
    assert disk(specs={**specs, "disk": "spinning rust"}) is None


def test_cuda_comes_from_the_server_before_its_specs_and_only_as_a_number() -> None:
    assert server_facts(listed(cuda_version="12.2 (driver 535)"))["cuda_max_good"] == 12.2
    specs = dict(listed()["specs"])
    assert server_facts(listed(specs={**specs, "cuda_version": "n/a"}))["cuda_max_good"] is None
    assert server_facts(listed(specs={**specs, "cuda_version": ""}))["cuda_max_good"] is None


def test_threads_are_the_last_number_of_the_cpus_text() -> None:
    assert threads_of({"cpus": "32/64"}) == 64
    assert threads_of({"cpus": "16"}) == 16
    assert threads_of({"cpus": None}) is None
    assert threads_of({}) is None


def test_vast_gpu_names_drop_the_vendor_and_the_brand() -> None:
    assert short_gpu_name("NVIDIA GeForce RTX 3090") == "RTX 3090"
    assert short_gpu_name("GeForce GTX 1080") == "GTX 1080"
    assert short_gpu_name("NVIDIA A100-SXM4-80GB") == "A100-SXM4-80GB"
    assert short_gpu_name("Tesla V100 NVIDIA ") == "Tesla V100 NVIDIA "


# ---------------------------------------------------------------------------- the currency


def test_the_offer_is_priced_in_the_cheapest_currency_that_has_a_rate() -> None:
    item = listed()
    assert pick_currency(item, RATES, bid=False) == "bitcoin"
    # CLORE at 2,000 a day for $100 becomes the cheaper at $0.01 a coin ($20)
    assert pick_currency(item, {**RATES, "CLORE-Blockchain": NANO // 100}, bid=False) == (
        "CLORE-Blockchain"
    )
    assert pick_currency(item, {"CLORE-Blockchain": NANO}, bid=True) == "CLORE-Blockchain"
    assert pick_currency(item, {}, bid=False) is None


def test_a_price_of_zero_or_not_in_coins_is_never_picked() -> None:
    item = listed(price={"on_demand": {"bitcoin": Coins(0), "CLORE-Blockchain": "12"}, "spot": {}})
    assert pick_currency(item, RATES, bid=False) is None
    assert pick_currency(item, RATES, bid=True) is None


def test_two_currencies_at_the_same_usd_price_keep_the_first() -> None:
    # 0.0008 BTC at $60,000 and 960 CLORE at $0.05: $48 a day each
    item = listed(
        price={
            "on_demand": {"bitcoin": Coins(800_000), "CLORE-Blockchain": Coins(960 * NANO)},
            "spot": {},
        }
    )
    assert pick_currency(item, RATES, bid=False) == "bitcoin"


def test_usd_prices_per_hour_and_back() -> None:
    assert usd_per_hour(800_000, 60_000 * NANO) == 2.0
    assert units_per_day(Decimal("2"), 60_000 * NANO) == 800_000
    assert units_per_day(Decimal("-1"), 60_000 * NANO) == 1  # never below one unit
    # 0.0000000001 $/h is 2.4 nano-USD a day: 2 at $1 a coin
    assert units_per_day(Decimal("0.0000000001"), NANO) == 2


def test_an_offer_id_names_the_server_and_the_gpu_count() -> None:
    assert split_offer_id(704) == (7, 4)
    assert split_offer_id(12_301) == (123, 1)


# ------------------------------------------------------------------------------- the search


def test_search_filters_orders_and_limits_offers_across_servers() -> None:
    listing = [listed(), listed(id=8, reliability=0.5)]
    q = parse_offer_query({"num_gpus": {"gte": 3}, "order": [["dph_total", "desc"]], "limit": 3})
    got = [o["id"] for o in search_offers(listing, RATES, q, NOW)]
    assert got == [704, 804, 703]  # 2.0, 2.0 (server order kept), then 1.5
    by_score = [o["id"] for o in search_offers(listing, RATES, OfferQuery(), NOW)]
    assert by_score == [704, 703, 804, 702, 803, 802]  # score, highest first


# -------------------------------------------------------------------------------- the query


def test_the_offer_type_and_its_aliases() -> None:
    for kind in ("bid", "interruptible"):
        assert parse_offer_query({"type": kind}).bid is True
    for kind in (None, "on-demand", "ask", "reserved"):
        assert parse_offer_query({"type": kind}).bid is False
    assert parse_offer_query({}).bid is False
    with pytest.raises(InvalidInput, match="type: expected on-demand or bid, got 'spot'"):
        parse_offer_query({"type": "spot"})


@pytest.mark.parametrize(
    "given, limit",
    [(None, DEFAULT_LIMIT), (5, 5), ("7", 7), (2.9, 2), (0, 1), (-3, 1), (10**6, MAX_LIMIT)],
)
def test_the_limit_is_a_number_kept_between_one_and_the_maximum(given: Any, limit: int) -> None:
    assert parse_offer_query({"limit": given}).limit == limit


@pytest.mark.parametrize("given", [True, "ten", [5], {"n": 5}])
def test_a_limit_that_is_not_a_number_is_refused(given: Any) -> None:
    with pytest.raises(InvalidInput, match=r"^limit: expected a number$"):
        parse_offer_query({"limit": given})


def test_allocated_storage_is_a_number_and_not_a_filter() -> None:
    q = parse_offer_query({"allocated_storage": "10.5"})
    assert (q.storage_gb, q.filters) == (10.5, {})
    assert OfferQuery().storage_gb == 5.0
    with pytest.raises(InvalidInput, match="allocated_storage"):
        parse_offer_query({"allocated_storage": "lots"})


def test_the_order_in_its_list_and_text_forms() -> None:
    q = parse_offer_query(
        {"order": [["dph_total", "asc"], ["score", "desc"], ["num_gpus"], "gpu_ram-", "+cpu_ram"]}
    )
    assert q.order == [
        ("dph_total", False),
        ("score", True),
        ("num_gpus", False),
        ("gpu_ram", True),
        ("cpu_ram", False),
    ]


@pytest.mark.parametrize("order", ["score", [[]], [[1, "asc"]], [["score", "up"]], [5]])
def test_a_malformed_order_is_refused(order: Any) -> None:
    with pytest.raises(InvalidInput, match=r"^order: expected a list of \[field, 'asc'\|'desc'\]$"):
        parse_offer_query({"order": order})


def test_query_keys_that_are_not_filters_stay_out_of_the_filters() -> None:
    q = parse_offer_query(
        {
            "order": [],
            "type": "bid",
            "limit": 3,
            "allocated_storage": 5,
            "disable_bundling": True,
            "select_cols": ["*"],
            "rentable": {"eq": True},
        }
    )
    assert q.filters == {"rentable": {"eq": True}}


def test_filters_in_their_forms_and_their_errors() -> None:
    assert parse_filters(None) == {}
    assert parse_filters({"num_gpus": 2, "gpu_name": {"in": ["RTX 4090"]}}) == {
        "num_gpus": {"eq": 2},
        "gpu_name": {"in": ["RTX 4090"]},
    }
    assert parse_filters({"a" * 64: 1}) == {"a" * 64: {"eq": 1}}
    with pytest.raises(InvalidInput, match=r"^q: expected an object of \{field: \{op: value\}\}$"):
        parse_filters([1], "q")
    with pytest.raises(InvalidInput, match=r"^query: invalid field name 'gpu-name'$"):
        parse_filters({"gpu-name": 1})
    with pytest.raises(InvalidInput, match="invalid field name"):
        parse_filters({"a" * 65: 1})
    with pytest.raises(InvalidInput, match=r"^query: unknown operator 'like' for gpu_name"):
        parse_filters({"gpu_name": {"like": "RTX"}})
    for op in ("in", "notin"):
        with pytest.raises(InvalidInput, match=f"^query: gpu_name {op} needs a list$"):
            parse_filters({"gpu_name": {op: "RTX 4090"}})


# ----------------------------------------------------------------------------- the ordering


def test_rows_sort_by_each_key_in_turn_with_missing_values_last() -> None:
    rows: list[dict[str, Any]] = [
        {"id": 1, "a": 2, "b": 1},
        {"id": 2, "a": None, "b": 9},
        {"id": 3, "a": 1, "b": 1},
        {"id": 4, "a": 3, "b": 2},
        {"id": 5, "b": 1},
    ]
    sort_rows(rows, [("b", False), ("a", True)])
    assert [r["id"] for r in rows] == [1, 3, 5, 4, 2]
    sort_rows(rows, [("a", True)])
    assert [r["id"] for r in rows] == [4, 1, 3, 5, 2]  # the rows without it keep their order
    sort_rows(rows, [("a", False)])
    assert [r["id"] for r in rows] == [3, 1, 4, 5, 2]


def test_rows_of_mixed_types_sort_by_their_text() -> None:
    rows: list[dict[str, Any]] = [{"v": "b"}, {"v": 10}, {"v": "a"}, {"v": 9}]
    sort_rows(rows, [("v", False)])
    assert [r["v"] for r in rows] == [10, 9, "a", "b"]
    sort_rows(rows, [("v", True)])
    assert [r["v"] for r in rows] == ["b", "a", 9, 10]


# ----------------------------------------------------------------------- the second round


def test_error_messages_quote_at_most_their_first_characters() -> None:
    long = "x" * 40
    with pytest.raises(InvalidInput) as caught:
        parse_filters({"-" + long: 1})
    assert str(caught.value) == f"query: invalid field name {('-' + long)[:32]!r}"
    with pytest.raises(InvalidInput) as caught:
        parse_filters({"num_gpus": {long: 1}})
    assert str(caught.value) == (
        f"query: unknown operator {long[:16]!r} for num_gpus "
        "(one of eq, neq, gt, gte, lt, lte, in, notin)"
    )
    with pytest.raises(InvalidInput) as caught:
        parse_offer_query({"type": long})
    assert str(caught.value) == f"type: expected on-demand or bid, got {long[:32]!r}"
    with pytest.raises(InvalidInput) as caught:
        parse_offer_query({"allocated_storage": long})
    assert str(caught.value) == f"allocated_storage: expected a number, got {long[:32]!r}"


def test_field_names_may_have_capitals_and_order_texts_keep_other_letters() -> None:
    assert parse_filters({"Gpu_Name_X": 1}) == {"Gpu_Name_X": {"eq": 1}}
    assert parse_offer_query({"order": ["maxX-", "X+"]}).order == [("maxX", True), ("X", False)]


def test_boolean_filters_take_the_clis_texts() -> None:
    row = {"verified": True}
    for text in ("true", "1", "yes", " YES "):
        assert matches(row, {"verified": {"eq": text}}), text
    assert not matches(row, {"verified": {"eq": "no"}})
    # a boolean compared with nothing: only eq/neq can hold
    assert not matches(row, {"verified": {"gt": None}})
    assert matches(row, {"verified": {"neq": None}})


def test_lte_holds_at_equality_and_an_unknown_field_skips_only_itself() -> None:
    row = {"num_gpus": 3}
    assert matches(row, {"num_gpus": {"lte": 3}})
    assert not matches(row, {"num_gpus": {"lt": 3}})
    assert not matches(row, {"not_ours": {"eq": 1}, "num_gpus": {"eq": 4}})


def test_numbers_sort_as_numbers_both_ways() -> None:
    rows: list[dict[str, Any]] = [{"v": 9}, {"v": 10}, {"v": 9.5}]
    sort_rows(rows, [("v", False)])
    assert [r["v"] for r in rows] == [9, 9.5, 10]
    sort_rows(rows, [("v", True)])
    assert [r["v"] for r in rows] == [10, 9.5, 9]


def test_a_negative_bid_at_a_cheap_coin_is_still_one_unit() -> None:
    assert units_per_day(Decimal("-1"), NANO // 1000) == 1
    assert units_per_day(Decimal("0"), NANO // 1000) == 1


def test_a_price_of_one_unit_is_a_price() -> None:
    item = listed(price={"on_demand": {"bitcoin": Coins(1)}, "spot": {"bitcoin": Coins(1)}})
    assert pick_currency(item, RATES, bid=False) == "bitcoin"
    whole = listed(
        price={"on_demand": {"bitcoin": Coins(1)}, "spot": {"bitcoin": Coins(1)}},
        partial_gpu_rental={},
    )
    assert len(server_offers(whole, RATES, OfferQuery(), NOW)) == 1
    assert len(server_offers(whole, RATES, OfferQuery(bid=True), NOW)) == 1


def test_partial_rental_of_a_two_gpu_server_and_a_one_gpu_minimum_above_its_size() -> None:
    two = listed(
        gpu_array=["NVIDIA GeForce RTX 4090"] * 2,
        partial_gpu_rental={"enabled": True, "min_gpus": 1, "free_indices": [0, 1]},
    )
    assert [o["num_gpus"] for o in server_offers(two, RATES, OfferQuery(), NOW)] == [1, 2]
    one = listed(
        gpu_array=["NVIDIA GeForce RTX 4090"],
        partial_gpu_rental={"enabled": True, "min_gpus": 2, "free_indices": [0]},
    )
    assert [o["num_gpus"] for o in server_offers(one, RATES, OfferQuery(), NOW)] == [1]


def test_the_score_keeps_four_decimals() -> None:
    item = listed(reliability=0.123456, partial_gpu_rental={})
    assert server_offers(item, RATES, OfferQuery(), NOW)[0]["score"] == round(0.123456 * 4, 4)
    assert round(0.123456 * 4, 4) != round(0.123456 * 4, 5)
