"""FastPath's ebs_cfg flags follow varp.learn: with learning on, vnet_decap passes a flood from a
MAC new here or moved up to the forwarder (test_hostctl_decap_learn checks the program on real BPF)."""

from __future__ import annotations

from dataclasses import replace

from gatekeeper.config import parse_config
from gatekeeper.vnet.bpf import layouts
from gatekeeper.vnet.bpf.fastpath import FastPath


def test_cfg_flags_punt_always_and_learn_with_varp_learn() -> None:
    on = parse_config({"host": "h1", "api_socket": "/tmp/x.sock",
                       "underlay": {"interface": "nosuchdev0", "address": "10.0.0.1"}})
    off = parse_config({"host": "h1", "api_socket": "/tmp/x.sock",
                        "underlay": {"interface": "nosuchdev0", "address": "10.0.0.1"}, "varp": {"learn": False}})
    assert on.learn and not off.learn
    assert FastPath(on, None).cfg_flags() == layouts.CFG_PUNT | layouts.CFG_LEARN
    assert FastPath(off, None).cfg_flags() == layouts.CFG_PUNT
    assert FastPath(replace(on, learn=False), None).cfg_flags() & layouts.CFG_LEARN == 0
