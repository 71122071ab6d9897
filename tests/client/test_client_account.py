"""The SDK's account keys and templates (SPEC §8) against a real openclore server over real
HTTP, in the synchronous and the asynchronous client: keys added, listed and deleted, their
refusals as exceptions; templates created, searched, used by create_order and deleted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from openclore.client import (
    AsyncClient,
    Client,
    InvalidSshKey,
    NotYourTemplate,
    SshKey,
    SshKeyDoesNotExist,
    SshKeyExists,
    Template,
    TemplateDoesNotExist,
)
from openclore.market.agents import desired_for

from support import Market

OPENSSH = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def new_key() -> str:
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*OPENSSH).decode()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def sdk(market: Market, token: str, made: list[Client]) -> Client:
    c = Client(token, base_url=market.url, rate_limit=False)
    made.append(c)
    return c


def test_ssh_keys_through_the_sdk(market: Market, clients: list[Client]) -> None:
    alice = sdk(market, market.user(), clients)
    line = new_key()
    key = alice.add_ssh_key("laptop", line + " me@laptop")
    assert isinstance(key, SshKey) and key.type == "ssh-ed25519" and key.bits == 256
    blob = base64.b64decode(line.split()[1])
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert key.fingerprint == "SHA256:" + expected
    assert [k.id for k in alice.ssh_keys()] == [key.id]
    with pytest.raises(SshKeyExists) as exists:
        alice.add_ssh_key("again", line)
    assert exists.value.key_id == key.id
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(InvalidSshKey) as invalid:
        alice.add_ssh_key("short", short.public_key().public_bytes(*OPENSSH).decode())
    assert invalid.value.reason is not None and "2048" in invalid.value.reason
    alice.delete_ssh_key(key.id)
    assert alice.ssh_keys() == []
    with pytest.raises(SshKeyDoesNotExist):
        alice.delete_ssh_key(key.id)


def test_templates_through_the_sdk(market: Market, clients: list[Client]) -> None:
    sid = market.server(market.user())
    owner = sdk(market, market.user(), clients)
    renter = sdk(market, market.user(bitcoin="1"), clients)
    template = owner.create_template(
        "PyTorch + Jupyter",
        "pytorch/pytorch:latest",
        ports={22: "tcp", 8888: "http"},
        env={"MODE": "train"},
        public=True,
        readme="Jupyter on 8888",
    )
    assert isinstance(template, Template) and template.public and template.mine
    assert template.ports == {"22": "tcp", "8888": "http"}
    private = owner.create_template("mine", "ubuntu:22.04")
    assert [t.name for t in renter.templates()] == ["PyTorch + Jupyter"]
    assert [t.name for t in renter.templates(q="TORCH")] == ["PyTorch + Jupyter"]
    assert [t.name for t in owner.templates()] == ["PyTorch + Jupyter", "mine"]

    order = renter.create_order(sid, template_id=template.id, env={"MODE": "eval"})
    assert order.image == "pytorch/pytorch:latest" and order.template_id == template.id
    key = renter.add_ssh_key("later", new_key())
    assert renter.attach_ssh_key(order.id, key.id) is True
    assert renter.attach_ssh_key(order.id, key.id) is False
    with market.db.read() as conn:
        (container,) = [d for d in desired_for(conn, sid) or [] if d.order_id == order.id]
    assert container.env == {"MODE": "eval"} and container.ports == {"22": "tcp", "8888": "http"}
    assert container.ssh_key == key.public_key
    with pytest.raises(ValueError):
        renter.create_order(sid)  # neither image nor template: refused before sending
    with pytest.raises(TemplateDoesNotExist):
        renter.create_order(sid, template_id=private.id)
    with pytest.raises(NotYourTemplate):
        renter.delete_template(template.id)
    owner.delete_template(private.id)
    assert [t.id for t in owner.templates()] == [template.id]


def test_the_async_client_has_them_too(market: Market) -> None:
    token = market.user()

    async def run() -> None:
        async with AsyncClient(token, base_url=market.url, rate_limit=False) as client:
            key = await client.add_ssh_key("k", new_key())
            assert [k.id for k in await client.ssh_keys()] == [key.id]
            await client.delete_ssh_key(key.id)
            made = await client.create_template("t", "ubuntu", public=False)
            assert [t.id for t in await client.templates()] == [made.id]
            await client.delete_template(made.id)
            assert await client.templates() == []

    asyncio.run(run())
