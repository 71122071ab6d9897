"""SSH keys and templates in the CLI (SPEC §8) against a real openclore server over real HTTP:
ssh-key add (a file or standard input), list and rm; template create, list and rm; rent
--template; each refusal is one line."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from openclore.cli.main import app
from openclore.market.agents import desired_for
from test_client_cli import Cli

from support import Market

OPENSSH = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def new_key() -> str:
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*OPENSSH).decode()


def write_key(tmp_path: Path) -> Path:
    path = tmp_path / "late.pub"
    path.write_text(new_key() + "\n")
    return path


def test_ssh_keys_from_a_file_and_from_stdin(market: Market, tmp_path: Path) -> None:
    cli = Cli(market, tmp_path, market.user("renter"))
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text(new_key() + " me@laptop\n")
    added = cli("ssh-key", "add", str(pub)).stdout
    assert "'id_ed25519.pub': ssh-ed25519 256 bits SHA256:" in added
    piped = cli.runner.invoke(
        app, ["ssh-key", "add", "-", "--name", "ci", "--json"], env=cli.env, input=new_key()
    )
    assert piped.exit_code == 0, piped.output
    listed = cli.json("ssh-key", "list")
    assert [k["name"] for k in listed] == ["id_ed25519.pub", "ci"]
    table = cli("ssh-key", "list").stdout
    assert "2 key(s)" in table and "ssh-ed25519" in table
    assert "ssh_key_exists" in cli.error("ssh-key", "add", str(pub))
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-rsa AAAA broken")
    assert "invalid_ssh_key" in cli.error("ssh-key", "add", str(bad))
    assert "cannot read" in cli.error("ssh-key", "add", str(tmp_path / "missing.pub"))
    assert cli("ssh-key", "rm", str(listed[0]["id"])).stdout.strip() == (
        f"key {listed[0]['id']} removed"
    )
    assert "ssh_key_dont_exist" in cli.error("ssh-key", "rm", str(listed[0]["id"]))
    assert [k["name"] for k in cli.json("ssh-key", "list")] == ["ci"]


def test_templates_and_rent_from_one(market: Market, tmp_path: Path) -> None:
    sid = market.server(market.user("host"), "rig")
    owner = Cli(market, tmp_path, market.user("owner"))
    renter = Cli(market, tmp_path, market.user("renter", bitcoin="0.01"))
    made = owner(
        "template",
        "create",
        "PyTorch + Jupyter",
        "--image",
        "pytorch/pytorch:latest",
        "--port",
        "22:tcp",
        "--port",
        "8888:http",
        "--env",
        "MODE=train",
        "--public",
    ).stdout
    assert "'PyTorch + Jupyter': pytorch/pytorch:latest, public" in made
    private = owner.json("template", "create", "mine", "--image", "ubuntu")
    assert private["public"] is False
    assert [t["name"] for t in renter.json("template", "list")] == ["PyTorch + Jupyter"]
    assert [t["name"] for t in owner.json("template", "list", "-q", "MIN")] == ["mine"]
    table = renter("template", "list").stdout
    assert "1 template(s)" in table and "22:tcp, 8888:http" in table
    (public,) = renter.json("template", "list")

    assert "rent needs --image or --template" in renter.error("rent", str(sid))
    order = renter.json("rent", str(sid), "--template", str(public["id"]))
    assert order["image"] == "pytorch/pytorch:latest" and order["template_id"] == public["id"]
    with market.db.read() as conn:
        (container,) = [d for d in desired_for(conn, sid) or [] if d.order_id == order["id"]]
    assert container.ports == {"22": "tcp", "8888": "http"} and container.env == {"MODE": "train"}

    key = renter.json("ssh-key", "add", str(write_key(tmp_path)), "--name", "late")
    attached = renter("ssh-key", "attach", str(order["id"]), str(key["id"])).stdout.strip()
    assert attached == f"key {key['id']} attached to order {order['id']}"
    again = renter.json("ssh-key", "attach", str(order["id"]), str(key["id"]))
    assert again == {"order_id": order["id"], "key_id": key["id"], "attached": False}
    renter("cancel", str(order["id"]))
    # a template by its name's slug ("PyTorch + Jupyter": pytorch-jupyter)
    by_name = renter.json("rent", str(sid), "--template", "pytorch-jupyter")
    assert by_name["template_id"] == public["id"]
    assert by_name["image"] == "pytorch/pytorch:latest"
    renter("cancel", str(by_name["id"]))
    assert "no template of that name (yours and public ones: pytorch-jupyter)" in renter.error(
        "rent", str(sid), "--template", "tensorflow"
    )
    # --wait knows from the template that port 22 is published: it waits for SSH and prints it
    waited = renter("rent", str(sid), "--template", str(public["id"]), "--wait").stdout
    assert any(line.startswith("ssh -p ") for line in waited.splitlines()), waited

    assert "not_your_template" in renter.error("template", "rm", str(public["id"]))
    assert "template_dont_exist" in renter.error("rent", str(sid), "--template", str(private["id"]))
    assert owner("template", "rm", str(private["id"])).stdout.strip() == (
        f"template {private['id']} deleted"
    )


def test_api_keys_in_the_cli(market: Market, tmp_path: Path) -> None:
    sid = market.server(market.user("host"), "rig")
    owner = Cli(market, tmp_path, market.user("owner", bitcoin="0.01"))
    made = owner(
        "key",
        "create",
        "--scopes",
        "read,rent",
        "--name",
        "agent",
        "--spend-limit",
        "bitcoin=0.001",
        "--expires-in",
        "3600",
    ).stdout
    assert "this secret is shown once" in made
    secret = made.split(": ", 1)[1].split()[0]
    listed = owner.json("key", "list")
    assert [k["scopes"] for k in listed][1] == ["read", "rent"]
    assert listed[1]["spend_limit"] == {"bitcoin": 0.001}
    table = owner("key", "list").stdout
    assert "agent" in table and "0.001 bitcoin" in table and "in 1h00m" in table
    assert secret not in table
    agent = Cli(market, tmp_path, secret)
    shown = agent.json("key", "show")
    assert shown["name"] == "agent" and shown["spent_today"] == {"bitcoin": 0}
    assert "missing_scope" in agent.error("ssh-key", "add", "-")
    assert len(agent.json("key", "list")) == 2  # a read
    rented = agent.json("rent", str(sid), "--image", "ubuntu", "--currency", "bitcoin")
    assert rented["api_key_id"] == listed[1]["id"], rented
    assert "--spend-limit" in owner.error("key", "create", "--scopes", "read", "--spend-limit", "x")
    assert owner("key", "revoke", str(listed[1]["id"])).stdout.strip() == (
        f"key {listed[1]['id']} revoked"
    )
    assert "invalid" in agent.error("key", "show").lower()
