"""Templates through the API (SPEC §8), on both databases: create, list (yours and public ones,
searched by name), delete (yours only), and orders started from them: the template's values
by default, the order's own where it gives them."""

from __future__ import annotations

from typing import Any

import httpx

from openclore.market.agents import desired_for

from support import Market, error, ok, order_body

PYTORCH = {
    "name": "PyTorch + Jupyter",
    "image": "pytorch/pytorch:latest",
    "command": "jupyter lab --allow-root",
    "env": {"MODE": "train"},
    "ports": {"22": "tcp", "8888": "http"},
    "jupyter_token": "secret123",
    "public": True,
    "readme": "Jupyter on 8888.",
}


def code2(response: httpx.Response) -> str:
    body = response.json()
    assert body["code"] == 2, body
    return str(body["error"])


def names(client: httpx.Client, **params: Any) -> list[str]:
    return [t["name"] for t in ok(client.get("/v1/templates", params=params))["templates"]]


def test_templates_are_created_listed_searched_and_deleted_by_their_owner(
    market: Market,
) -> None:
    alice = market.client(market.user())
    bob = market.client(market.user())
    public = ok(alice.post("/v1/create_template", json=PYTORCH))["template"]
    assert public["image"] == "pytorch/pytorch:latest" and public["public"] is True
    assert public["ports"] == {"22": "tcp", "8888": "http"} and public["mine"] is True
    assert public["created_at"] == market.now() and public["readme"] == "Jupyter on 8888."
    private = ok(alice.post("/v1/create_template", json={"name": "mine", "image": "ubuntu"}))
    private_id = private["template"]["id"]
    assert private["template"]["public"] is False and private["template"]["command"] is None

    assert names(alice) == ["PyTorch + Jupyter", "mine"]
    assert names(bob) == ["PyTorch + Jupyter"]  # a private template is its owner's only
    (seen,) = ok(bob.get("/v1/templates"))["templates"]
    assert seen["mine"] is False and seen["owner"] == market.user_id(alice.headers["auth"])
    assert names(bob, q="pytorch") == ["PyTorch + Jupyter"]  # any case
    assert names(bob, q="JUPY") == ["PyTorch + Jupyter"]
    assert names(bob, q="ubuntu") == [] and names(alice, q="MI") == ["mine"]
    assert names(alice, q="%") == []  # a search is literal text

    # only its owner deletes a template
    assert error(bob.post("/v1/delete_template", json={"id": public["id"]})) == (
        "not_your_template"
    )
    assert error(bob.post("/v1/delete_template", json={"id": private_id})) == (
        "template_dont_exist"
    )
    ok(alice.post("/v1/delete_template", json={"id": private_id}))
    assert names(alice) == ["PyTorch + Jupyter"]
    assert error(alice.post("/v1/delete_template", json={"id": private_id})) == (
        "template_dont_exist"
    )
    events = [e["type"] for e in ok(alice.get("/v1/events", params={"after": 0}))["events"]]
    assert events.count("template.created") == 2 and events.count("template.deleted") == 1


def test_template_fields_are_validated_like_an_orders(market: Market) -> None:
    alice = market.client(market.user())

    def refused(**fields: Any) -> str:
        return code2(alice.post("/v1/create_template", json={"name": "t", "image": "u", **fields}))

    assert "image" in refused(image="not an image!")
    assert "ports" in refused(ports={"99999": "tcp"})
    assert "ports" in refused(ports={"80": "http", "81": "http"})
    assert "env" in refused(env={"A=B": "x"})
    assert "jupyter_token" in refused(jupyter_token="bad;token")
    assert "disk_gb" in refused(disk_gb=0)
    assert "name" in refused(name="")
    assert "name" in refused(name="x" * 65)
    assert "image" in code2(alice.post("/v1/create_template", json={"name": "t"}))
    assert ok(alice.get("/v1/templates"))["templates"] == []


def test_an_order_starts_from_a_template_and_overrides_its_fields(market: Market) -> None:
    sid = market.server(market.user())
    owner = market.client(market.user())
    template = ok(owner.post("/v1/create_template", json=PYTORCH))["template"]
    alice = market.client(market.user(bitcoin="1"))
    body = {"currency": "bitcoin", "type": "on-demand", "renting_server": sid}
    oid = ok(alice.post("/v1/create_order", json={**body, "template_id": template["id"]}))[
        "order_id"
    ]
    with market.db.read() as conn:
        (container,) = [d for d in desired_for(conn, sid) or [] if d.order_id == oid]
    assert container.image == "pytorch/pytorch:latest"
    assert container.command == "jupyter lab --allow-root"
    assert container.env == {"MODE": "train"} and container.jupyter_token == "secret123"
    assert container.ports == {"22": "tcp", "8888": "http"}
    (order,) = [o for o in ok(alice.get("/v1/my_orders"))["orders"] if o["id"] == oid]
    assert order["template_id"] == template["id"] and order["image"] == "pytorch/pytorch:latest"
    ok(alice.post("/v1/cancel_order", json={"id": oid}))

    # the order's own fields win
    mine = {**body, "template_id": template["id"], "image": "ubuntu:22.04", "env": {"A": "1"}}
    oid2 = ok(alice.post("/v1/create_order", json={**mine, "ports": {"22": "tcp"}}))["order_id"]
    with market.db.read() as conn:
        (over,) = [d for d in desired_for(conn, sid) or [] if d.order_id == oid2]
    assert over.image == "ubuntu:22.04" and over.env == {"A": "1"}
    assert over.ports == {"22": "tcp"} and over.command == "jupyter lab --allow-root"
    ok(alice.post("/v1/cancel_order", json={"id": oid2}))

    # without a template the image is required; someone's private template is not usable
    assert "image" in code2(alice.post("/v1/create_order", json=body))
    hidden = {"name": "hidden", "image": "ubuntu", "public": False}
    private = ok(owner.post("/v1/create_template", json=hidden))["template"]
    refused = alice.post("/v1/create_order", json={**body, "template_id": private["id"]})
    assert error(refused) == "template_dont_exist"
    assert refused.json()["template_id"] == private["id"]
    assert error(alice.post("/v1/create_order", json={**body, "template_id": 999999})) == (
        "template_dont_exist"
    )
    # a plain order shows no template_id
    oid3 = ok(alice.post("/v1/create_order", json=order_body(sid)))["order_id"]
    (plain,) = [o for o in ok(alice.get("/v1/my_orders"))["orders"] if o["id"] == oid3]
    assert "template_id" not in plain


def test_the_demo_world_offers_two_public_templates(market: Market) -> None:
    from openclore.market.demo import seed

    with market.db.write() as conn:
        seed(conn, market.settings, market.now())
    renter = market.client(market.user())
    found = ok(renter.get("/v1/templates"))["templates"]
    assert [(t["id"], t["name"], t["owner"], t["public"]) for t in found] == [
        (1, "PyTorch + Jupyter", 3, True),
        (2, "Ubuntu + SSH", 3, True),
    ]
    assert found[0]["image"] == "pytorch/pytorch:latest"
    assert found[0]["ports"] == {"22": "tcp", "8888": "http"}
