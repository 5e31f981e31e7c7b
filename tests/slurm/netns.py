"""Several "machines" on this one: each a network, UTS (hostname) and mount namespace, joined by a
private veth link. tests/slurm/cluster.py runs one slurmd in each.

Every node's namespaces are held by one sleeping process (`Node.holder`), entered with `nsenter
--target`; nothing is named under /run/netns, so nothing outlives its processes. Inside a node:
- its own hostname (`node1`, ...);
- the link `pslink` with address 10.213.7.<i>/24 (and `lo`); no route leads anywhere else, so
  only the other nodes of this set can be reached;
- /etc/hosts replaced (a bind mount in the node's own mount namespace, never the machine's file) by
  one naming every node, so that host names resolve as on a real cluster: Slurm's node list, the
  MASTER_ADDR the batch scripts derive from it, and the address gloo picks for its own host name.
The mount namespace is a slave of the machine's: everything else (the checkout, /tmp, the shared run
directories) is seen at the same paths, as on a cluster's shared file system.

`destroy` kills every process left in a node's namespaces (daemons, job steps, their children) and
with them the namespaces and the link.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LINK = "pslink"
SUBNET = "10.213.7"
PROGRAMS = ("ip", "nsenter", "unshare")


@dataclass
class Node:
    name: str
    addr: str
    holder: int  # pid of the process holding the namespaces
    net_ns: int  # inode of the network namespace (identifies its processes)
    uts_ns: int

    def enter(self) -> list[str]:
        """Command prefix that runs a program inside this node (network, hostname, mounts), in the
        caller's working directory (entering a mount namespace would otherwise start it in /)."""
        return [_program("nsenter"), f"--target={self.holder}", "--net", "--uts", "--mount", "--wd=.", "--"]

    def read_only(self, path: Path, *, writable: tuple[Path, ...] = ()) -> None:
        """Make `path` read-only for this node's processes (a bind mount in its own mount
        namespace; the machine and the other nodes still write there), except the existing
        folders `writable` below it."""
        _run(*self.enter(), "mount", "--bind", "-o", "ro", str(path), str(path))
        for folder in writable:
            _run(*self.enter(), "mount", "--bind", str(folder), str(folder))
            _run(*self.enter(), "mount", "-o", "remount,bind,rw", str(folder))  # the bind copies "ro"

    def processes(self, *, include_holder: bool = False) -> list[int]:
        """Every process in this node's namespaces (both inodes must match)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or (int(entry) == self.holder and not include_holder):
                continue
            try:
                if (os.stat(f"/proc/{entry}/ns/net").st_ino == self.net_ns
                        and os.stat(f"/proc/{entry}/ns/uts").st_ino == self.uts_ns):
                    pids.append(int(entry))
            except OSError:  # exited meanwhile, or not ours to inspect
                continue
        return pids

    def kill_all(self, *, include_holder: bool = False, grace: float = 5.0) -> None:
        """SIGTERM every process of the node, SIGKILL what is left after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            pids = self.processes(include_holder=include_holder)
            if not pids:
                return
            for pid in pids:
                _signal(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.processes(include_holder=include_holder):
                _reap(pids)
                time.sleep(0.1)
            _reap(pids)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pids: list[int]) -> None:
    """Collect the exit status of those that are our own children (no zombies left behind)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _run(*args: str) -> None:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")


def _program(name: str) -> str:
    """Full path (Debian keeps `ip` in /usr/sbin, which a user's PATH may lack); the name if absent."""
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or name


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can): tried, not guessed."""
    missing = [p for p in PROGRAMS if _program(p) == p]
    if missing:
        return f"{', '.join(missing)} missing (bash scripts/install_slurm.sh installs them)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = subprocess.run([_program("unshare"), "--net", "--uts", "--mount", "--propagation", "slave", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode:
        return f"cannot create network/UTS/mount namespaces here: {probe.stderr.strip() or probe.returncode}"
    return None


def create(directory: Path, names: list[str], *, timeout: float = 20) -> list[Node]:
    """Start one holder per name, link them, and return the nodes (destroyed again on failure)."""
    directory.mkdir(parents=True, exist_ok=True)
    hosts = directory / "hosts"
    addrs = {name: f"{SUBNET}.{i + 1}" for i, name in enumerate(names)}
    hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in addrs.items()))
    nodes: list[Node] = []
    try:
        for name in names:
            ready = directory / f"{name}.ready"
            ready.unlink(missing_ok=True)
            # unshare(2) moves unshare itself into the new namespaces and execs sh, then sleep: the
            # Popen pid is the holder. Own session: a Ctrl-C of the caller does not reach it.
            script = f"mount --bind {hosts} /etc/hosts && hostname {name} && touch {ready} && exec sleep infinity"
            proc = subprocess.Popen([_program("unshare"), "--net", "--uts", "--mount", "--propagation", "slave",
                                     "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
            deadline = time.monotonic() + timeout
            while not ready.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"the namespaces of {name} could not be set up: {proc.stderr.read().decode()}")
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"the namespaces of {name} were not ready after {timeout:.0f} s")
                time.sleep(0.05)
            proc.stderr.close()
            nodes.append(Node(name, addrs[name], proc.pid, os.stat(f"/proc/{proc.pid}/ns/net").st_ino,
                              os.stat(f"/proc/{proc.pid}/ns/uts").st_ino))
        # one segment: a veth pair for two nodes (created directly inside both namespaces, so that
        # no name is ever taken in the machine's own namespace); a bridge node for more is not needed
        if len(nodes) != 2:
            raise ValueError(f"a veth link joins exactly two nodes, got {len(nodes)}")
        a, b = nodes
        _run(_program("ip"), "link", "add", LINK, "netns", str(a.holder), "type", "veth", "peer", "name", LINK,
             "netns", str(b.holder))
        for node in nodes:
            _run(*node.enter(), _program("ip"), "addr", "add", f"{node.addr}/24", "dev", LINK)
            _run(*node.enter(), _program("ip"), "link", "set", LINK, "up")
            _run(*node.enter(), _program("ip"), "link", "set", "lo", "up")
    except BaseException:
        destroy(nodes)
        raise
    return nodes


def destroy(nodes: list[Node]) -> None:
    """Kill everything in the nodes' namespaces, the holders last: the namespaces and the link go
    with their last process."""
    for node in nodes:
        node.kill_all(include_holder=False, grace=3.0)
    for node in nodes:
        node.kill_all(include_holder=True, grace=1.0)
