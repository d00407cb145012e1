"""The authorisation rules as pure decisions (the real-user end-to-end check is in test_auth_e2e.py)."""

from __future__ import annotations

import os
import socket

import pytest

from sdd.api import auth
from sdd.api.auth import Access, Peer, Policy
from sdd.api.methods import METHODS

POLICY = Policy(admin_gids=frozenset({50}), read_gids=frozenset({100}))


def peer(uid=1000, gid=1000, groups=()):
    return Peer(pid=1, uid=uid, gid=gid, groups=frozenset(groups))


@pytest.mark.parametrize("who, access", [
    (peer(uid=0, gid=0), Access.ADMIN),
    (peer(gid=50), Access.ADMIN),
    (peer(groups=[7, 50]), Access.ADMIN),
    (peer(groups=[100]), Access.READ),
    (peer(gid=100), Access.READ),
    (peer(groups=[100, 50]), Access.ADMIN),
    (peer(), Access.NONE),
    (peer(uid=65534, gid=65534), Access.NONE),
])
def test_access_follows_uid_and_groups(who, access):
    assert POLICY.access(who) == access


def test_user_mode_owner_is_privileged_and_nobody_else():
    policy = Policy(frozenset(), frozenset(), owner_uid=1234)
    assert policy.access(peer(uid=1234)) == Access.ADMIN
    assert policy.access(peer(uid=1235)) == Access.NONE


def test_every_method_is_classified_default_deny():
    read_only = {m for m in set(METHODS) | {"subscribe"} if auth.allowed(m, Access.READ)}
    assert read_only == {"ping", "status", "subscribe", "runs.stats", "workflows.list", "workflows.get",
                         "runs.list", "runs.get", "detections.list", "detections.get", "quarantine.list"}
    assert {m for m in METHODS if auth.allowed(m, Access.NONE)} == {"ping"}
    assert all(auth.allowed(m, Access.ADMIN) for m in METHODS)
    assert not auth.allowed("some.future.method", Access.READ)


def test_peer_of_reads_the_kernel_credentials():
    a, b = socket.socketpair()
    with a, b:
        me = auth.peer_of(a)
    assert (me.pid, me.uid, me.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert me.groups == frozenset(os.getgroups()) - {os.getgid()} | (me.groups & {os.getgid()})


def test_unknown_group_names_are_ignored_not_fatal():
    policy = Policy.from_config("no-such-group-xyz", ["also-missing-xyz", "users"], user_mode=False)
    assert policy.admin_gids == frozenset()
    assert len(policy.read_gids) == 1
