"""Templates (market/templates.py) driven directly: what a stored template holds, the per-user
limit at its boundary, the search's literal and truncated text, who may use and delete one, the
events and audit entries each change writes, and which order fields a template fills.

Written to kill mutants of `scripts/mutation templates` the HTTP tests (test_templates.py) do not
see: empty fields stored as none, the 100-template limit counted per owner, a 64-character search,
listing in creation order, the entries' exact names, targets and details."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, update

from openclore.domain.errors import MarketError
from openclore.market.accounts import create_user
from openclore.market.audit import Actor
from openclore.market.inputs import CreateOrderRequest, CreateTemplateRequest
from openclore.market.templates import (
    MAX_QUERY,
    MAX_TEMPLATES,
    TEMPLATE_CREATE,
    TEMPLATE_DELETE,
    apply_template,
    create_template,
    delete_template,
    list_templates,
    usable_template,
)
from openclore.store.schema import audit_log, events, templates

from support import Market

pytestmark = pytest.mark.origin("mutant")

NOW = 1_000_000


def person(market: Market, name: str) -> int:
    with market.db.write() as conn:
        return create_user(conn, name, NOW, market.settings)


def make(market: Market, uid: int, **fields: Any) -> dict[str, Any]:
    req = CreateTemplateRequest.model_validate({"name": "t", "image": "ubuntu", **fields})
    with market.db.write() as conn:
        return create_template(conn, uid, req, NOW, actor=Actor.user(uid, "10.0.0.1", "key:1:ab"))


def refusal(excinfo: pytest.ExceptionInfo[MarketError]) -> tuple[str, dict[str, Any]]:
    return excinfo.value.name, dict(excinfo.value.extra)


def test_empty_fields_are_stored_as_none_and_given_ones_as_they_are(market: Market) -> None:
    uid = person(market, "alice")
    empty = make(market, uid, command="", env={}, ports={}, jupyter_token="", readme="")
    assert {k: empty[k] for k in ("command", "env", "ports", "jupyter_token", "readme")} == {
        "command": None,
        "env": None,
        "ports": None,
        "jupyter_token": None,
        "readme": None,
    }
    with market.db.read() as conn:
        row = conn.execute(select(templates).where(templates.c.id == empty["id"])).one()
    assert (row.command, row.env, row.ports, row.jupyter_token, row.readme) == (None,) * 5
    full = make(
        market,
        uid,
        name="full",
        command="run",
        env={"A": "1"},
        ports={"22": "tcp"},
        jupyter_token="tok",
        disk_gb=30,
        public=True,
        readme="hi",
    )
    assert {k: v for k, v in full.items() if k != "id"} == {
        "name": "full",
        "image": "ubuntu",
        "command": "run",
        "env": {"A": "1"},
        "ports": {"22": "tcp"},
        "jupyter_token": "tok",
        "disk_gb": 30,
        "public": True,
        "readme": "hi",
        "owner": uid,
        "mine": True,
        "created_at": NOW,
    }
    assert full["id"] == empty["id"] + 1


def test_the_limit_is_a_hundred_templates_per_owner(market: Market) -> None:
    alice, bob = person(market, "alice"), person(market, "bob")
    assert MAX_TEMPLATES == 100
    for i in range(MAX_TEMPLATES - 1):
        make(market, alice, name=f"t{i}")
    make(market, bob, name="bobs")  # another owner's template does not count
    make(market, alice, name="last")  # the 100th
    with pytest.raises(MarketError) as refused:
        make(market, alice, name="one too many")
    assert refusal(refused) == ("template_limit_reached", {"limit": 100})
    make(market, bob, name="bob can")


def test_the_search_is_literal_case_free_text_cut_at_64_characters(market: Market) -> None:
    uid = person(market, "alice")
    long_name = "x" * MAX_QUERY
    make(market, uid, name="b-second")
    make(market, uid, name="A-first")
    make(market, uid, name=long_name)
    with market.db.read() as conn:
        # listed in creation order, not by name
        assert [t["name"] for t in list_templates(conn, uid)] == ["b-second", "A-first", long_name]
        assert [t["name"] for t in list_templates(conn, uid, "")] == [
            "b-second",
            "A-first",
            long_name,
        ]
        assert [t["name"] for t in list_templates(conn, uid, "a-F")] == ["A-first"]
        # a longer text is cut to its first 64 characters
        assert [t["name"] for t in list_templates(conn, uid, long_name + "yyy")] == [long_name]
        assert list_templates(conn, uid, "x" * (MAX_QUERY - 1) + "y") == []
        assert list_templates(conn, uid, "_") == []  # literal: no wildcard


def test_who_may_use_and_delete_a_template(market: Market) -> None:
    alice, bob = person(market, "alice"), person(market, "bob")
    shared = make(market, alice, name="shared", public=True)
    own = make(market, alice, name="own")
    with market.db.read() as conn:
        assert usable_template(conn, alice, own["id"]).name == "own"
        assert usable_template(conn, bob, shared["id"]).name == "shared"
        with pytest.raises(MarketError) as hidden:
            usable_template(conn, bob, own["id"])
        assert refusal(hidden) == ("template_dont_exist", {"template_id": own["id"]})
        with pytest.raises(MarketError) as missing:
            usable_template(conn, alice, 999_999)
        assert refusal(missing) == ("template_dont_exist", {"template_id": 999_999})
        assert [t["mine"] for t in list_templates(conn, bob)] == [False]
        assert [t["mine"] for t in list_templates(conn, alice)] == [True, True]
    with market.db.write() as conn, pytest.raises(MarketError) as theirs:
        delete_template(conn, bob, shared["id"], NOW)
    assert refusal(theirs) == ("not_your_template", {"template_id": shared["id"]})
    with market.db.write() as conn:
        delete_template(conn, alice, shared["id"], NOW + 5, actor=Actor.user(alice))
    with market.db.read() as conn:
        assert [t["name"] for t in list_templates(conn, alice)] == ["own"]
        assert [t["name"] for t in list_templates(conn, bob)] == []


def test_each_change_writes_its_event_and_audit_entry(market: Market) -> None:
    uid = person(market, "alice")
    made = make(market, uid, name="shared", public=True)
    with market.db.write() as conn:
        delete_template(conn, uid, made["id"], NOW + 7, actor=Actor.user(uid, "10.0.0.2"))
    with market.db.read() as conn:
        seen = [
            (r.type, r.created_at, json.loads(r.data))
            for r in conn.execute(select(events).where(events.c.user_id == uid))
        ]
        audit = [
            (r.actor, r.user_id, r.action, r.target, r.detail, r.source)
            for r in conn.execute(select(audit_log).order_by(audit_log.c.id))
        ]
    data = [
        (kind, at, {k: d[k] for k in d if k in ("template_id", "name", "public")})
        for kind, at, d in seen
    ]
    assert data == [
        ("template.created", NOW, {"template_id": made["id"], "name": "shared", "public": True}),
        ("template.deleted", NOW + 7, {"template_id": made["id"]}),
    ]
    target = f"template:{made['id']}"
    assert audit == [
        (
            f"user:{uid}",
            uid,
            TEMPLATE_CREATE,
            target,
            {"public": True, "via": "key:1:ab"},
            "10.0.0.1",
        ),
        (f"user:{uid}", uid, TEMPLATE_DELETE, target, {}, "10.0.0.2"),
    ]
    assert (TEMPLATE_CREATE, TEMPLATE_DELETE) == ("template.create", "template.delete")


def order(**fields: Any) -> CreateOrderRequest:
    return CreateOrderRequest.model_validate(
        {"currency": "bitcoin", "type": "on-demand", "renting_server": 1, **fields}
    )


def test_a_template_fills_only_the_fields_an_order_leaves_out(market: Market) -> None:
    uid = person(market, "alice")
    full = make(
        market,
        uid,
        name="full",
        image="pytorch/pytorch:latest",
        command="jupyter lab",
        env={"MODE": "train"},
        ports={"22": "tcp", "8888": "http"},
        jupyter_token="secret",
        disk_gb=40,
    )
    bare = make(market, uid, name="bare", image="ubuntu:22.04")
    with market.db.read() as conn:
        plain = order(image="busybox")
        assert apply_template(conn, uid, plain) is plain  # no template: the order as it is
        filled = apply_template(conn, uid, order(template_id=full["id"]))
        assert (
            filled.image,
            filled.command,
            filled.env,
            filled.ports,
            filled.jupyter_token,
            filled.disk_gb,
        ) == (
            "pytorch/pytorch:latest",
            "jupyter lab",
            {"MODE": "train"},
            full["ports"],
            "secret",
            40,
        )
        own = order(
            template_id=full["id"],
            image="mine",
            command="own",
            env={"A": "1"},
            ports={"22": "tcp"},
            jupyter_token="t2",
            disk_gb=10,
        )
        kept = apply_template(conn, uid, own)
        assert (
            kept.image,
            kept.command,
            kept.env,
            kept.ports,
            kept.jupyter_token,
            kept.disk_gb,
        ) == (
            "mine",
            "own",
            {"A": "1"},
            {"22": "tcp"},
            "t2",
            10,
        )
        # an empty text in the order is left out too; the template's empty fields give nothing
        blank = apply_template(conn, uid, order(template_id=full["id"], command=""))
        assert blank.command == "jupyter lab"
        from_bare = apply_template(conn, uid, order(template_id=bare["id"], env={"B": "2"}))
        assert (from_bare.image, from_bare.command, from_bare.env, from_bare.ports) == (
            "ubuntu:22.04",
            None,
            {"B": "2"},
            None,
        )
        assert (from_bare.jupyter_token, from_bare.disk_gb) == (None, None)
        # the order's env is its own copy, not the stored template's
        assert filled.env is not None
        filled.env["X"] = "y"
        again = apply_template(conn, uid, order(template_id=full["id"]))
        assert again.env == {"MODE": "train"}


def test_templates_are_listed_by_id_on_either_database(market: Market) -> None:
    """On PostgreSQL a row written again moves to the end of its table and index: the first
    template, moved to another owner and back, comes last unless the listing orders by id."""
    alice, bob = person(market, "alice"), person(market, "bob")
    first = make(market, alice, name="first")
    second = make(market, alice, name="second")
    with market.db.write() as conn:
        moved = update(templates).where(templates.c.id == first["id"])
        conn.execute(moved.values(user_id=bob))
        conn.execute(moved.values(user_id=alice))
    with market.db.read() as conn:
        assert [t["id"] for t in list_templates(conn, alice)] == [first["id"], second["id"]]
        assert [t["id"] for t in list_templates(conn, alice, "S")] == [first["id"], second["id"]]
