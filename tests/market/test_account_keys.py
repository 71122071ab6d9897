"""Account SSH keys through the API (SPEC §8), on both databases: real keys parsed and
fingerprinted as ssh-keygen prints them, refusals, limits, and the keys every new order's
container gets (as they were when the order was created)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import warnings
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from openclore.agent.launch import AUTOSSH_ENTRYPOINT
from openclore.market.account_keys import MAX_KEYS, joined_keys
from openclore.market.agents import desired_for

from support import Market, error, ok, order_body

OPENSSH = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def ed25519_key(comment: str = "me@laptop") -> str:
    line = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*OPENSSH).decode()
    return f"{line} {comment}" if comment else line


def rsa_key(bits: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.public_key().public_bytes(*OPENSSH).decode()


def ssh_keygen_fingerprint(line: str) -> str:
    """What ``ssh-keygen -lf`` prints, computed independently: SHA256 of the blob, base64
    without padding."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def code2(response: object) -> str:
    body = response.json()  # type: ignore[attr-defined]
    assert body["code"] == 2, body
    return str(body["error"])


def test_keys_are_parsed_fingerprinted_listed_and_deleted(market: Market) -> None:
    alice = market.client(market.user())
    ed = ed25519_key()
    key = ok(alice.post("/v1/add_ssh_key", json={"name": "laptop", "public_key": ed + "\n"}))["key"]
    assert key["type"] == "ssh-ed25519" and key["bits"] == 256 and key["name"] == "laptop"
    assert key["fingerprint"] == ssh_keygen_fingerprint(ed)
    assert key["public_key"] == ed and key["created_at"] == market.now()

    ecdsa = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(*OPENSSH).decode()
    second = ok(alice.post("/v1/add_ssh_key", json={"name": "yubi", "public_key": ecdsa}))["key"]
    assert second["type"] == "ecdsa-sha2-nistp384" and second["bits"] == 384
    big = rsa_key(3072)
    third = ok(alice.post("/v1/add_ssh_key", json={"name": "old", "public_key": big}))["key"]
    assert third["type"] == "ssh-rsa" and third["bits"] == 3072
    assert third["fingerprint"] == ssh_keygen_fingerprint(big)

    # a retry with the same Idempotency-Key gets the first answer, not ssh_key_exists
    retry, headers = {"name": "o", "public_key": ed25519_key()}, {"Idempotency-Key": "add-o"}
    first = ok(alice.post("/v1/add_ssh_key", json=retry, headers=headers))
    assert ok(alice.post("/v1/add_ssh_key", json=retry, headers=headers)) == first
    ok(alice.post("/v1/delete_ssh_key", json={"id": first["key"]["id"]}))

    listed = ok(alice.get("/v1/ssh_keys"))["keys"]
    assert [k["id"] for k in listed] == [key["id"], second["id"], third["id"]]
    # another user sees none of them and cannot delete them
    bob = market.client(market.user())
    assert ok(bob.get("/v1/ssh_keys"))["keys"] == []
    assert error(bob.post("/v1/delete_ssh_key", json={"id": key["id"]})) == "ssh_key_dont_exist"
    # the same key on another account is fine; twice on one account is not
    ok(bob.post("/v1/add_ssh_key", json={"name": "shared", "public_key": ed}))
    again = alice.post("/v1/add_ssh_key", json={"name": "again", "public_key": ed + " other"})
    assert error(again) == "ssh_key_exists" and again.json()["key_id"] == key["id"]

    ok(alice.post("/v1/delete_ssh_key", json={"id": second["id"]}))
    assert [k["id"] for k in ok(alice.get("/v1/ssh_keys"))["keys"]] == [key["id"], third["id"]]
    assert error(alice.post("/v1/delete_ssh_key", json={"id": second["id"]})) == (
        "ssh_key_dont_exist"
    )
    events = ok(alice.get("/v1/events", params={"after": 0}))["events"]
    kinds = [e["type"] for e in events]
    assert kinds.count("ssh_key.added") == 4 and kinds.count("ssh_key.deleted") == 2


def test_bad_keys_and_names_are_refused(market: Market) -> None:
    alice = market.client(market.user())

    def refused(public_key: str) -> str:
        body = alice.post("/v1/add_ssh_key", json={"name": "k", "public_key": public_key}).json()
        assert body["code"] == 6 and body["error"] == "invalid_ssh_key", body
        return str(body["reason"])

    assert "2048" in refused(rsa_key(1024))
    with warnings.catch_warnings():  # DSA is deprecated: that is why it is refused
        warnings.simplefilter("ignore")
        dsa_key = dsa.generate_private_key(key_size=1024).public_key()
        dsa_line = dsa_key.public_bytes(*OPENSSH).decode()
    assert dsa_line.startswith("ssh-dss ")
    assert "accepted" in refused(dsa_line)
    refused("ssh-ed25519 AAAAnotbase64!!")
    refused("hello world")
    refused("ssh-ed25519")
    refused(ed25519_key() + "\n" + ed25519_key())  # one key per call
    broken = ed25519_key("").split()
    refused(f"{broken[0]} {broken[1][:-8]}")
    assert "name" in code2(alice.post("/v1/add_ssh_key", json={"name": "", "public_key": "x"}))
    long_name = {"name": "n" * 65, "public_key": ed25519_key()}
    assert "name" in code2(alice.post("/v1/add_ssh_key", json=long_name))
    assert "public_key" in code2(alice.post("/v1/add_ssh_key", json={"name": "k"}))
    assert ok(alice.get("/v1/ssh_keys"))["keys"] == []


def test_at_most_twenty_keys(market: Market) -> None:
    alice = market.client(market.user())
    for i in range(MAX_KEYS):
        ok(alice.post("/v1/add_ssh_key", json={"name": f"k{i}", "public_key": ed25519_key()}))
    over = alice.post("/v1/add_ssh_key", json={"name": "one more", "public_key": ed25519_key()})
    assert error(over) == "ssh_key_limit_reached" and over.json()["limit"] == MAX_KEYS


def test_a_new_order_carries_the_accounts_keys_as_they_were(market: Market) -> None:
    sid = market.server(market.user())
    token = market.user(bitcoin="1")
    alice = market.client(token)
    first, second, own = ed25519_key("a@x"), rsa_key(2048), ed25519_key("order@x")
    ok(alice.post("/v1/add_ssh_key", json={"name": "a", "public_key": first}))
    key2 = ok(alice.post("/v1/add_ssh_key", json={"name": "b", "public_key": second}))["key"]
    oid = ok(alice.post("/v1/create_order", json=order_body(sid, ssh_key=own)))["order_id"]
    with market.db.read() as conn:
        (container,) = [d for d in desired_for(conn, sid) or [] if d.order_id == oid]
    assert container.ssh_key == "\n".join([own, first, second])
    # a key deleted or added later does not change the running container's spec
    ok(alice.post("/v1/delete_ssh_key", json={"id": key2["id"]}))
    ok(alice.post("/v1/add_ssh_key", json={"name": "c", "public_key": ed25519_key()}))
    with market.db.read() as conn:
        (same,) = [d for d in desired_for(conn, sid) or [] if d.order_id == oid]
    assert same == container
    ok(alice.post("/v1/cancel_order", json={"id": oid}))

    # an order without its own key gets the account's keys alone; the next order, the new set
    oid2 = ok(alice.post("/v1/create_order", json=order_body(sid)))["order_id"]
    with market.db.read() as conn:
        (later,) = [d for d in desired_for(conn, sid) or [] if d.order_id == oid2]
    keys = [k["public_key"] for k in ok(alice.get("/v1/ssh_keys"))["keys"]]
    assert later.ssh_key == "\n".join(keys) and len(keys) == 2
    # no keys at all: no ssh_key, as before
    bob = market.client(market.user(bitcoin="1"))
    sid2 = market.server(market.user())
    oid3 = ok(bob.post("/v1/create_order", json=order_body(sid2)))["order_id"]
    with market.db.read() as conn:
        (plain,) = [d for d in desired_for(conn, sid2) or [] if d.order_id == oid3]
    assert plain.ssh_key is None


def test_the_autossh_entrypoint_writes_every_key_on_its_own_line(tmp_path: Path) -> None:
    """The agent's entrypoint (``printf '%s\\n' "$SSH_KEY"``) run by a real POSIX shell, with
    /root/.ssh moved to a temporary folder: a multi-line SSH_KEY becomes one line per key."""
    script = AUTOSSH_ENTRYPOINT
    start = script.index('if [ -n "$SSH_KEY" ]')
    snippet = script[start : script.index("fi\n", start) + 3]
    snippet = snippet.replace("/root/.ssh", str(tmp_path))
    keys = [ed25519_key("a@x"), rsa_key(2048), ed25519_key("order@x")]
    joined = joined_keys(keys[2], "\n".join(keys[:2]))
    assert joined is not None
    subprocess.run(["sh", "-c", snippet], env={"SSH_KEY": joined}, check=True)
    written = (tmp_path / "authorized_keys").read_text()
    assert written.splitlines() == [keys[2], keys[0], keys[1]] and written.endswith("\n")


def test_a_key_is_attached_to_a_live_order_made_before_it(market: Market) -> None:
    sid = market.server(market.user())
    alice = market.client(market.user(bitcoin="1"))
    own = ed25519_key("order@x")
    oid = ok(alice.post("/v1/create_order", json=order_body(sid, ssh_key=own)))["order_id"]
    with market.db.read() as conn:
        (before,) = [d for d in desired_for(conn, sid) or [] if d.order_id == oid]
    later = ed25519_key("later@x")
    key = ok(alice.post("/v1/add_ssh_key", json={"name": "later", "public_key": later}))["key"]
    body = {"order_id": oid, "key_id": key["id"]}
    assert ok(alice.post("/v1/attach_ssh_key", json=body))["attached"] is True
    with market.db.read() as conn:
        (after,) = [d for d in desired_for(conn, sid) or [] if d.order_id == oid]
    assert after.ssh_key == f"{own}\n{later}" and after.spec_hash() != before.spec_hash()
    assert ok(alice.post("/v1/attach_ssh_key", json=body))["attached"] is False  # once

    bob = market.client(market.user(bitcoin="1"))
    bob_key = ok(bob.post("/v1/add_ssh_key", json={"name": "b", "public_key": ed25519_key()}))
    theirs = {"order_id": oid, "key_id": bob_key["key"]["id"]}
    assert error(bob.post("/v1/attach_ssh_key", json=theirs)) == "order_dont_exist"
    assert error(alice.post("/v1/attach_ssh_key", json=theirs)) == "ssh_key_dont_exist"
    ok(alice.post("/v1/cancel_order", json={"id": oid}))
    assert error(alice.post("/v1/attach_ssh_key", json=body)) == "order_not_active"


def test_an_order_without_account_keys_keeps_its_key_exactly() -> None:
    """Orders made before account keys existed keep their container's spec hash."""
    odd = "ssh-ed25519 AAAAC3 me@x \n\nssh-ed25519 AAAAC3 me@x"
    assert joined_keys(odd, None) == odd and joined_keys("", None) == ""
    assert joined_keys(None, None) is None
    assert joined_keys(odd, "ssh-rsa AAAAB3 k") == "ssh-ed25519 AAAAC3 me@x\nssh-rsa AAAAB3 k"
