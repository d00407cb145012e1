"""Who is calling, and what they may call: peer credentials from the kernel and the default-deny policy.

The kernel vouches for the peer at connect time: `SO_PEERCRED` gives pid, uid and primary gid,
`SO_PEERGROUPS` the supplementary groups (no /proc lookup by pid, so no pid-reuse race). The policy is the
contract's: root and members of `api.socket_group` may call everything; members of `api.read_groups` may
call `ping`, `status`, the `*.list`/`*.get` methods, `runs.stats` and `subscribe`; anyone else only `ping`.
In user mode (`sdd --user`) the daemon's own uid is privileged as well.
"""

from __future__ import annotations

import enum
import grp
import logging
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python does not export the name
_UCRED = struct.Struct("3i")
_PEERGROUPS_BUFLEN = 1024  # CPython's getsockopt cap: 256 groups; more falls back to the group database

ANYONE_METHODS = frozenset({"ping"})
READ_METHODS = frozenset({
    "ping", "status", "subscribe", "runs.stats",
    "workflows.list", "workflows.get", "runs.list", "runs.get", "detections.list", "detections.get",
    "quarantine.list",
})
# Methods that change state: audited with the caller's uid, allowed or not.
WRITE_METHODS = frozenset({"runs.start", "runs.cancel", "detections.submit", "quarantine.restore", "reload"})


class Access(enum.IntEnum):
    """What a peer may do, in increasing order."""

    NONE = 0  # ping only
    READ = 1
    ADMIN = 2

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Peer:
    """The credentials of the process on the other end, as the kernel gave them at connect time."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]

    @property
    def actor(self) -> str:
        """How the audit log names the caller."""
        return f"uid:{self.uid}"


def peer_of(sock: socket.socket) -> Peer:
    """Reads the peer's credentials from a connected Unix socket."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return Peer(pid, uid, gid, frozenset(_peer_groups(sock, uid, gid)))


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> Iterable[int]:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BUFLEN)
    except OSError as exc:
        # ERANGE: more than 256 groups; ENOPROTOOPT: an old kernel. The group database is the best left.
        log.debug("SO_PEERGROUPS unavailable (%s); using the group database for uid %d", exc, uid)
        try:
            return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
        except (KeyError, OSError):
            return ()
    count = len(raw) // 4
    return struct.unpack(f"{count}I", raw[: count * 4])


def group_id(name: str) -> int | None:
    """The gid of a group name (or a numeric gid given as a string), None when there is no such group."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if name.isdigit():
            return int(name)
        return None


@dataclass(frozen=True)
class Policy:
    """The authorisation rules, with group names resolved once at start-up."""

    admin_gids: frozenset[int]
    read_gids: frozenset[int]
    owner_uid: int | None = None  # user mode: the daemon's own uid is privileged

    @classmethod
    def from_config(cls, socket_group: str, read_groups: Iterable[str], user_mode: bool) -> Policy:
        admin: set[int] = set()
        if socket_group:
            gid = group_id(socket_group)
            if gid is None:
                # In user mode the owner is privileged anyway; the system default group is just absent.
                log.log(logging.INFO if user_mode else logging.WARNING,
                        "api.socket_group %r does not exist: only root%s may call state-changing methods",
                        socket_group, " and the owner" if user_mode else "")
            else:
                admin.add(gid)
        read: set[int] = set()
        for name in read_groups:
            gid = group_id(name)
            if gid is None:
                log.warning("api.read_groups: group %r does not exist; ignored", name)
            else:
                read.add(gid)
        return cls(frozenset(admin), frozenset(read), os.getuid() if user_mode else None)

    def access(self, peer: Peer) -> Access:
        if peer.uid == 0 or (self.owner_uid is not None and peer.uid == self.owner_uid):
            return Access.ADMIN
        gids = peer.groups | {peer.gid}
        if gids & self.admin_gids:
            return Access.ADMIN
        if gids & self.read_gids:
            return Access.READ
        return Access.NONE


def allowed(method: str, access: Access) -> bool:
    """Default-deny: a method nobody listed needs ADMIN."""
    if method in ANYONE_METHODS:
        return True
    if method in READ_METHODS:
        return access >= Access.READ
    return access >= Access.ADMIN


__all__ = [
    "ANYONE_METHODS",
    "READ_METHODS",
    "WRITE_METHODS",
    "Access",
    "Peer",
    "Policy",
    "allowed",
    "group_id",
    "peer_of",
]
