"""wgfast.config: wg(8) / wg-quick(8) files into SetRequest and back (key names: wg(8) manual)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from wgfast.config import (
    ConfigError,
    format_config,
    format_snapshot,
    key_to_base64,
    load_config,
    parse_config,
)
from wgfast.endpoint import Endpoint
from wgfast.uapi import (
    DeviceSnapshot,
    PeerSnapshot,
    format_get,
    parse_set,
)

SK = bytes(PrivateKey.generate())
PK1 = bytes(PrivateKey.generate().public_key)
PK2 = bytes(PrivateKey.generate().public_key)
PSK = bytes(PrivateKey.generate())

FULL = f"""
# a wg-quick file
[Interface]
Address = 10.0.0.1/24, fd00::1/64
address=10.0.1.1/24
DNS = 1.1.1.1, example.com,2606:4700::1111
MTU = 1380
Table = off
PreUp = echo "pre up = yes" # a comment
PostUp = ip rule add table 5
PostUp = echo two
PreDown = true
PostDown = false
SaveConfig = true
PrivateKey = {key_to_base64(SK)}
ListenPort = 51820
FwMark = 0x20

[Peer]
PublicKey = {key_to_base64(PK1)}
PresharedKey = {key_to_base64(PSK)}
AllowedIPs = 10.0.0.2/32, fd00::2/128
AllowedIPs = 192.168.7.9/24,  10.99.0.1
Endpoint = [2001:db8::7]:51820
PersistentKeepalive = 25

[peer]
publickey={key_to_base64(PK2)}
allowed ips = 0.0.0.0/0, ::/0
ENDPOINT = 192.0.2.1:4500
PersistentKeepalive = off
"""


def test_parse_full_file() -> None:
    cfg = parse_config(FULL)
    req, q = cfg.request, cfg.quick
    assert req.replace_peers and req.private_key == SK
    assert req.listen_port == 51820 and req.fwmark == 0x20
    p1, p2 = req.peers
    assert p1.public_key == PK1 and p1.preshared_key == PSK and p1.replace_allowed_ips
    assert [str(c.network) for c in p1.allowed_ips] == [
        "10.0.0.2/32", "fd00::2/128", "192.168.7.0/24", "10.99.0.1/32"]
    assert str(p1.endpoint) == "[2001:db8::7]:51820"
    assert p1.persistent_keepalive_interval == 25
    assert p2.public_key == PK2 and p2.preshared_key is None
    assert [str(c.network) for c in p2.allowed_ips] == ["0.0.0.0/0", "::/0"]
    assert p2.endpoint == Endpoint(ipaddress.ip_address("192.0.2.1"), 4500)
    assert p2.persistent_keepalive_interval == 0
    assert [str(a) for a in q.addresses] == ["10.0.0.1/24", "fd00::1/64", "10.0.1.1/24"]
    assert [str(a) for a in q.dns] == ["1.1.1.1", "2606:4700::1111"]
    assert q.dns_search == ["example.com"]
    assert (q.mtu, q.table, q.save_config) == (1380, "off", True)
    assert q.pre_up == ['echo "pre up = yes"']
    assert q.post_up == ["ip rule add table 5", "echo two"]
    assert (q.pre_down, q.post_down) == (["true"], ["false"])


def test_round_trip() -> None:
    cfg = parse_config(FULL)
    text = cfg.to_text()
    again = parse_config(text)
    assert again.request == cfg.request
    assert again.quick == cfg.quick
    assert format_config(again.request, again.quick) == text


def test_same_request_as_uapi() -> None:
    """A file and the equivalent UAPI set produce the same SetRequest (one apply path)."""
    cfg = parse_config(f"""[Interface]
PrivateKey = {key_to_base64(SK)}
ListenPort = 7
[Peer]
PublicKey = {key_to_base64(PK1)}
AllowedIPs = 10.0.0.0/8
Endpoint = 1.2.3.4:5
""")
    req = parse_set([f"private_key={SK.hex()}", "listen_port=7", "replace_peers=true",
                     f"public_key={PK1.hex()}", "endpoint=1.2.3.4:5",
                     "replace_allowed_ips=true", "allowed_ip=10.0.0.0/8"])
    assert cfg.request == req


def test_format_snapshot_like_showconf() -> None:
    snap = DeviceSnapshot(private_key=SK, listen_port=51820, fwmark=0, peers=[
        PeerSnapshot(public_key=PK1, endpoint=Endpoint(ipaddress.ip_address("fe80::1%lo"), 9),
                     allowed_ips=[ipaddress.ip_network("10.0.0.0/24")], rx_bytes=5,
                     persistent_keepalive_interval=0)])
    text = format_snapshot(snap)
    assert text == (f"[Interface]\nListenPort = 51820\nPrivateKey = {key_to_base64(SK)}\n\n"
                    f"[Peer]\nPublicKey = {key_to_base64(PK1)}\nAllowedIPs = 10.0.0.0/24\n"
                    "Endpoint = [fe80::1%lo]:9\n")
    assert "errno=0" in format_get(snap)


def test_hostname_endpoint_resolved() -> None:
    cfg = parse_config(f"[Peer]\nPublicKey={key_to_base64(PK1)}\nEndpoint=localhost:51820\n")
    ep = cfg.request.peers[0].endpoint
    assert ep is not None and ep.address.is_loopback and ep.port == 51820
    with pytest.raises(ConfigError, match="resolution disabled"):
        parse_config(f"[Peer]\nPublicKey={key_to_base64(PK1)}\nEndpoint=localhost:1\n",
                     resolve=False)


BAD = [
    ("PrivateKey = x\n", 1, "outside of a section"),
    ("[Interface]\nPrivateKey = abc\n", 2, "44 base64"),
    ("[Interface]\nPrivateKey = " + "!" * 43 + "=\n", 2, "44 base64"),
    ("[Interface]\nListenPort = 70000\n", 2, "ListenPort"),
    ("[Interface]\nListenPort = -1\n", 2, "ListenPort"),
    ("[Interface]\nFwMark = 0x1ffffffff\n", 2, "32-bit"),
    ("[Interface]\nFwMark = on\n", 2, "FwMark"),
    ("[Interface]\nMTU = big\n", 2, "MTU"),
    ("[Interface]\nSaveConfig = yes\n", 2, "SaveConfig"),
    ("[Interface]\nAddress = 10.0.0.300/24\n", 2, "Address"),
    ("[Interface]\nPublicKey = x\n", 2, "unknown key"),
    ("[Interface]\nColour = blue\n", 2, "unknown key"),
    ("[Interface]\n\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", 3, "no PublicKey"),
    (f"[Peer]\nPublicKey = {key_to_base64(PK1)}\nAllowedIPs = 10.0.0.0/33\n", 3, "prefix"),
    (f"[Peer]\nPublicKey = {key_to_base64(PK1)}\nAllowedIPs = nope/8\n", 3, "AllowedIPs"),
    (f"[Peer]\nPublicKey = {key_to_base64(PK1)}\nEndpoint = 1.2.3.4\n", 3, "host:port"),
    (f"[Peer]\nPublicKey = {key_to_base64(PK1)}\nEndpoint = 1.2.3.4:99999\n", 3,
     "host:port"),
    (f"[Peer]\nPublicKey = {key_to_base64(PK1)}\nPersistentKeepalive = 65536\n", 3,
     "PersistentKeepalive"),
    (f"[Peer]\nPublicKey = {key_to_base64(PK1)}\nMTU = 1400\n", 3, "unknown key"),
    ("[Interface]\njust words\n", 2, "Key = Value"),
    ("[Tunnel]\n", 1, "unknown section"),
    ("# nothing\n", None, "no [Interface]"),
]


@pytest.mark.parametrize("text, lineno, msg", BAD)
def test_errors_name_the_line(text: str, lineno: int | None, msg: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, filename="h3.conf")
    assert ei.value.lineno == lineno
    assert msg in ei.value.message
    assert str(ei.value).startswith(f"h3.conf:{lineno}" if lineno else "h3.conf")


def test_load_config(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "h3wg0.conf")
    with open(path, "w") as f:
        f.write(FULL)
    assert load_config(path).request.private_key == SK
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path + ".missing")


@settings(max_examples=200)
@given(st.text(alphabet=st.sampled_from(list("[]=#,./:abcdefilnoprstuyAEIKPS0123456789 \n")),
               max_size=120))
def test_garbage_gives_config_error(text: str) -> None:
    try:
        parse_config(text, resolve=False)
    except ConfigError as e:
        assert e.message


@pytest.mark.skipif(shutil.which("wg-quick") is None, reason="needs wg-quick")
@pytest.mark.skipif(os.geteuid() != 0, reason="wg-quick re-executes itself through sudo unless "
                    "run as root")
def test_wg_quick_strip_agrees(tmp_path: object) -> None:
    """The real wg-quick reads our serialized file, and its stripped form parses to the same
    request (wg-quick strip drops exactly the wg-quick keys)."""
    cfg = parse_config(FULL)
    path = os.path.join(str(tmp_path), "h3wg0.conf")
    with open(path, "w") as f:
        f.write(cfg.to_text())
    os.chmod(path, 0o600)
    out = subprocess.run(["wg-quick", "strip", path], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    stripped = parse_config(out)
    assert stripped.request == cfg.request
    assert stripped.quick.addresses == [] and stripped.quick.mtu is None
