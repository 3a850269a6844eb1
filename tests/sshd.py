"""A real OpenSSH server for the SFTP tests, on 127.0.0.1 and a free port.

Each server has its own host key, client key and authorized_keys in a folder of its
own, and lets in the user the tests run as (root too: `PermitRootLogin` is set for
keys), by key only. It serves the whole file system, so a test can look at what
arrived "on the server" with plain file operations. `stop` kills the listener and
every session process it forked, as a crashed or unplugged server would vanish.

Without `sshd` the tests skip, unless POLICYD_REQUIRE_SSHD=1 (CI sets it): then they
fail, so a CI machine that lost openssh-server cannot pass by skipping them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def sshd_binary() -> str:
    """The absolute path of sshd (it re-executes itself, so it needs one)."""
    found = shutil.which("sshd", path=_SEARCH)
    if found is None:
        if os.environ.get("POLICYD_REQUIRE_SSHD") == "1":
            pytest.fail("POLICYD_REQUIRE_SSHD=1 but there is no sshd (Debian: openssh-server)")
        pytest.skip("no sshd on this machine (Debian: apt-get install openssh-server)")
    return os.path.abspath(found)


def write_key(path: Path) -> str:
    """A new Ed25519 private key at `path` (mode 0600); its public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path.write_bytes(private)
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SshServer:
    def __init__(self, folder: Path) -> None:
        self.binary = sshd_binary()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_public = write_key(folder / "host_key")
        self.client_key = folder / "client_key"
        (folder / "authorized_keys").write_text(write_key(self.client_key) + "\n")
        self.config = folder / "sshd_config"
        self.config.write_text(
            f"ListenAddress 127.0.0.1:{self.port}\n"
            f"HostKey {folder / 'host_key'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
            f"AllowUsers {self.user}\n"
            "PidFile none\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # the key files live under the test's temporary folder
            "StrictModes no\n"
            "Subsystem sftp internal-sftp\n"
        )
        self.log = folder / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def known_hosts_line(self, host: str = "127.0.0.1") -> str:
        return f"[{host}]:{self.port} {self.host_public}\n"

    def start(self) -> None:
        if os.geteuid() == 0:
            # privilege separation needs its empty folder; Debian makes it at boot
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"sshd exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"sshd did not listen on 127.0.0.1:{self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        """Kill the listener and its sessions at once (no goodbye to the clients)."""
        if self.process is None:
            return
        # Stop the whole tree first, so nothing forks or is re-parented while it dies.
        stopped: list[int] = []
        tree = self.process.pid
        while fresh := [p for p in (tree, *_descendants(tree)) if p not in stopped]:
            for pid in fresh:
                _signal(pid, signal.SIGSTOP)
                stopped.append(pid)
        for pid in stopped:
            _signal(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended by itself meanwhile
        os.kill(pid, sig)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
