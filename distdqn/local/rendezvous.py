"""Where the ranks of a torch.distributed group meet, bound so that only the run can reach it.

torch's TCPStore, left to itself, listens on every interface (``*:PORT``), and gloo picks its
interface from the host name. Here rank 0 binds the store's socket itself, to one address, and
hands it to the store (``master_listen_fd``); gloo is told the interface that carries that
address (``GLOO_SOCKET_IFNAME``). On one host that address is the loopback; across hosts it is the
node's address on the cluster's network, the one a firewall must keep inside the cluster
(docs/running.md). No Ray here: ``single``'s local ranks use it as apex's and allreduce's do.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
import struct

import torch.distributed as dist

LOOPBACK = "127.0.0.1"
_SIOCGIFADDR = 0x8915


def listen(address: str) -> socket.socket:
    """A socket bound to ``address`` on a free port, listening: rank 0's store takes it over."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    sock.listen(128)
    return sock


def interface_of(address: str) -> str | None:
    """The name of this host's network interface that has IPv4 ``address`` (None: none has it)."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue   # an interface without an IPv4 address
        if socket.inet_ntoa(packed[20:24]) == address:
            return name
    return None


def init_group(backend: str, address: str, port: int, rank: int, world_size: int, timeout_s: float,
               listener: socket.socket | None = None, local_address: str | None = None) -> None:
    """Join (rank 0: host, on ``listener``) the group whose store is at ``address:port``; gloo
    exchanges on the interface of ``local_address`` (this process's own address on the network
    that reaches the others; default ``address``: on one host, the loopback)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    interface = interface_of(local_address or address)
    if interface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    if rank == 0:
        if listener is None:
            raise ValueError("rank 0 hosts the store: it needs the socket `listen` bound")
        store = dist.TCPStore(address, port, world_size, True, timeout=timeout,
                              master_listen_fd=listener.detach(), wait_for_workers=False)
    else:
        store = dist.TCPStore(address, port, world_size, False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
