"""`sftp://user@host[:port]/path` locations: a folder on another machine, over SSH.

The connection is pyfilesystem2's SSH filesystem (`fs.sshfs`, on paramiko). User, host
and port come from the URL alone (`~/.ssh/config` is not read, so what the site config
says is what is used), over IPv4 (fs.sshfs resolves names with gethostbyname). A
location with an `ssh_key` logs in with that key only, no agent and no other key; one
without uses the default keys and agent of the user policyd runs as, as ssh would.
The host key must already be known: in `~/.ssh/known_hosts` of that user, or in
`/etc/ssh/ssh_known_hosts`, under the URL's host name or the address it resolves to.
An unknown host is refused, never added: policyd would otherwise hand its data to
whoever answers first.

The file operations go straight to that filesystem's SFTP session, because the FS
methods would break the invariants: `getinfo` stats the target of a link before it
looks at the link, `move` deletes the old file before it renames the new one, and
`openbin` prefetches a whole file into memory. So, as `LocalStore` does on `file://`
(spec/rules.md section 9, invariant 4): every relative path is checked segment by
segment and every folder on the way is looked at with `lstat`, so a symbolic link on
the server is refused instead of followed (the root itself may be a link: it is the
site's own choice). A copy writes to a temporary name opened with O_EXCL (a link
planted at that name makes the open fail instead of being followed), hashes the bytes
as it sends them, asks the server to fsync (`fsync@openssh.com`, where it has it),
checks the size, reads the file back and compares the checksum (invariant 2: for
SFTP, a re-read), and only then renames it into place with `posix-rename@openssh.com`
(atomic, replacing). Reads stream in 4 MiB windows, each fetched with pipelined
requests, so memory stays bounded whatever the file size. Free space comes from
`statvfs@openssh.com`; a server without it gives None ("unknown"), and copies then go
ahead without the free-space check. paramiko has no call for OpenSSH's statvfs and
fsync extensions; those two use its SFTP request primitive.

SFTP cannot open a file without following a link, so a link swapped in between the
check of a path and its use is not caught on reads (writes are safe: O_EXCL). A copy
that loses its connection cannot remove its temporary file; it stays, named
`.NAME.TAG.policyd-tmp`, until the same action runs again (a retry, or `apply` of the
same plan) or someone removes it.

Connections are pooled per location: an action takes an idle connection (or opens
one), uses it alone (a paramiko SFTP session must not carry two threads' requests at
once), and gives it back, so an apply holds at most about as many connections as it
runs actions at once. A connection that failed is closed instead of being given back.
Errors say what happened and whether a retry may help: an unreachable host, a refused
connection, a lost connection or a timeout are retried; a failed login, an unknown or
changed host key or an unusable key file are not (a person must act).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import posixpath
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import paramiko
from fs.errors import CreateFailed
from fs.sshfs import SSHFS
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY
from paramiko.sftp_client import SFTPClient

from policyd.actions.base import ActionFailed, refused
from policyd.actions.stores import CHUNK, Written, pipe, segments, temp_name

#: Seconds to open the TCP connection, read the server's banner and log in.
CONNECT_TIMEOUT: Final = 20.0
#: Seconds one request may wait for the server's answer before the connection is
#: taken for lost (a host gone from the network would otherwise hang the copy).
IO_TIMEOUT: Final = 120.0
#: The files a server's host key is looked up in (paramiko by itself reads only the
#: first, and only under the address it connected to).
KNOWN_HOSTS: Final = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")

#: Errors that mean the connection is gone or unusable (not an answer of the server).
_LOST: Final = (paramiko.SSHException, EOFError, TimeoutError, ConnectionError)


@dataclass(frozen=True)
class RemoteStat:
    """The SFTP attributes a copy keeps, shaped like `os.stat_result` (whole seconds:
    SFTP version 3 has no finer times)."""

    st_size: int
    st_mode: int
    st_mtime: float

    @property
    def st_mtime_ns(self) -> int:
        return int(self.st_mtime) * 1_000_000_000


@dataclass(frozen=True)
class SftpUrl:
    """The parts of an `sftp://` location URL."""

    user: str
    host: str
    port: int
    root: str

    @classmethod
    def parse(cls, location: str, url: str) -> SftpUrl:
        """Read `sftp://[user@]host[:port]/path`; the user defaults to the one policyd
        runs as, the port to 22. A password in the URL is refused: use `ssh_key`."""
        parts = urlsplit(url)
        try:
            port = parts.port or 22
        except ValueError:
            raise ActionFailed(
                f"location {location}: {url!r} has an invalid port", retryable=False
            ) from None
        if parts.password is not None:
            raise ActionFailed(
                f"location {location}: passwords in sftp URLs are not supported; "
                "give the location an ssh_key",
                retryable=False,
            )
        root = posixpath.normpath(unquote(parts.path)) if parts.path else ""
        if not parts.hostname or not root.startswith("/"):
            raise ActionFailed(
                f"location {location}: {url!r} is not sftp://[USER@]HOST[:PORT]/PATH",
                retryable=False,
            )
        user = unquote(parts.username) if parts.username else getpass.getuser()
        return cls(user, parts.hostname, port, root)

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


class UnknownHostKey(paramiko.SSHException):
    """The server's host key is in no known_hosts file: refused, never added."""


class KnownHostsOnly(paramiko.MissingHostKeyPolicy):
    """Accept a server whose key is listed for the URL's host name (or the address it
    resolved to) in one of `KNOWN_HOSTS`; refuse any other.

    paramiko's own check looks the key up under the resolved address only (fs.sshfs
    connects to an address), while `ssh` records the name an operator typed: this
    policy is what makes an entry written by `ssh` or `ssh-keyscan HOST` count.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        names = {_known_hosts_name(self.host, self.port), hostname}
        for file in KNOWN_HOSTS:
            path = Path(file).expanduser()
            if not path.is_file():
                continue
            known = paramiko.HostKeys(str(path))
            for name in names:
                entry = known.lookup(name)
                expected = entry.get(key.get_name()) if entry is not None else None
                if expected is None:
                    continue
                if expected.asbytes() == key.asbytes():
                    return
                raise paramiko.BadHostKeyException(hostname, key, expected)
        raise UnknownHostKey(
            f"the host key of {_known_hosts_name(self.host, self.port)} "
            f"({key.get_name()} {key.fingerprint}) is not in {' or '.join(KNOWN_HOSTS)} "
            "of the user policyd runs as; check the fingerprint with the host's admins, "
            f"then add it (ssh-keyscan -p {self.port} {self.host} >> ~/.ssh/known_hosts)"
        )


def _known_hosts_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


class _SSHFS(SSHFS):
    """fs.sshfs's filesystem, closing the SSH client of a connection that failed: fs.sshfs
    leaves it open, a socket and a transport thread for every failed try."""

    def __init__(self, host: str, **options: Any) -> None:
        try:
            super().__init__(host, **options)
        except BaseException:
            client = getattr(self, "_client", None)
            if client is not None:
                client.close()
            raise


def _session_of(filesystem: SSHFS) -> SFTPClient:
    """The SFTP session of an fs.sshfs filesystem (it has no public accessor)."""
    session: SFTPClient = filesystem._sftp
    return session


def _usable(filesystem: SSHFS) -> bool:
    """A connection worth keeping: its channel open (a killed session closes it before
    the transport notices) and its transport alive."""
    channel = _session_of(filesystem).get_channel()
    transport = channel.get_transport()
    return not channel.closed and transport is not None and transport.is_active()


class _Pool:
    """Idle connections of one location, taken by one action at a time."""

    def __init__(self) -> None:
        self._idle: list[SSHFS] = []
        self._lock = threading.Lock()

    def take(self) -> SSHFS | None:
        """An idle connection that is still up, or None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                filesystem = self._idle.pop()
            if _usable(filesystem):
                return filesystem
            _close_quietly(filesystem)

    def give_back(self, filesystem: SSHFS) -> None:
        with self._lock:
            self._idle.append(filesystem)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for filesystem in idle:
            _close_quietly(filesystem)


def _close_quietly(filesystem: SSHFS) -> None:
    with contextlib.suppress(Exception):  # a dead connection may fail to close; it is gone
        filesystem.close()


class SftpStore:
    """An `sftp://` location, with the interface of `LocalStore` (see the module)."""

    def __init__(self, name: str, url: str, ssh_key: Path | None) -> None:
        self.name = name
        self.url = SftpUrl.parse(name, url)
        self.root = self.url.root
        self.ssh_key = ssh_key
        self._key: paramiko.PKey | None = None
        self._pool = _Pool()
        self._statvfs = True
        self._fsync = True

    # ---- connections

    def _load_key(self) -> paramiko.PKey | None:
        if self.ssh_key is None or self._key is not None:
            return self._key
        try:
            self._key = paramiko.PKey.from_path(self.ssh_key)
        except paramiko.PasswordRequiredException:
            raise ActionFailed(
                f"location {self.name}: ssh_key {self.ssh_key} needs a passphrase; "
                "policyd runs unattended and needs a key without one",
                retryable=False,
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            raise ActionFailed(
                f"location {self.name}: cannot use ssh_key {self.ssh_key}: {exc}",
                retryable=False,
            ) from None
        return self._key

    def _connect(self) -> SSHFS:
        key = self._load_key()
        try:
            filesystem = _SSHFS(
                self.url.host,
                user=self.url.user,
                pkey=key,
                port=self.url.port,
                timeout=CONNECT_TIMEOUT,
                config_path=os.devnull,
                policy=KnownHostsOnly(self.url.host, self.url.port),
                # with an ssh_key, that key only; without one, ssh's defaults
                look_for_keys=key is None,
                allow_agent=key is None,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
            )
        except CreateFailed as exc:
            raise self._connect_error(exc.__context__ or exc) from None
        except (OSError, EOFError) as exc:
            raise self._connect_error(exc) from None
        _session_of(filesystem).get_channel().settimeout(IO_TIMEOUT)
        return filesystem

    def _connect_error(self, exc: BaseException) -> ActionFailed:
        where = f"location {self.name} ({self.url.where})"
        if isinstance(exc, paramiko.AuthenticationException):
            key = f"ssh_key {self.ssh_key}" if self.ssh_key else "the default keys and agent"
            return ActionFailed(
                f"{where}: login refused with {key} ({exc}); is its public key in the "
                f"authorized_keys of {self.url.user} there?",
                retryable=False,
            )
        if isinstance(exc, UnknownHostKey):
            return ActionFailed(f"{where}: {exc}", retryable=False)
        if isinstance(exc, paramiko.BadHostKeyException):
            return ActionFailed(
                f"{where}: the server's host key is not the one known_hosts has for it "
                "(a reinstalled server, or someone in between): check it with the host's "
                "admins before changing known_hosts",
                retryable=False,
            )
        return ActionFailed(f"{where}: cannot connect: {exc or type(exc).__name__}")

    @contextlib.contextmanager
    def _session(self) -> Iterator[SFTPClient]:
        """A connection's SFTP session for this thread alone, given back afterwards
        unless it failed; a lost connection becomes a retryable ActionFailed."""
        filesystem = self._pool.take() or self._connect()
        keep = False
        try:
            yield _session_of(filesystem)
            keep = True
        except _LOST as exc:
            raise ActionFailed(
                f"location {self.name}: lost the connection to {self.url.where} "
                f"({exc or type(exc).__name__})"
            ) from exc
        except (ActionFailed, GeneratorExit):
            keep = True  # a refusal, or a reader stopped early: the connection is fine
            raise
        except OSError as exc:  # an answer of the server that the method did not expect
            keep = True
            raise ActionFailed(
                f"location {self.name} ({self.url.where}): {exc}",
                retryable=not isinstance(exc, PermissionError),
            ) from exc
        finally:
            if keep and _usable(filesystem):
                self._pool.give_back(filesystem)
            else:
                _close_quietly(filesystem)

    def close(self) -> None:
        """Close the idle connections (a later use opens new ones)."""
        self._pool.close()

    # ---- paths

    def _url_of(self, absolute: str) -> str:
        return f"sftp://{self.url.where}{absolute}"

    def _resolve(self, sftp: SFTPClient, rel: str, *, create_dirs: bool = False) -> str:
        """The absolute path of `rel` on the server, with no symbolic link on the way
        from the root (each folder looked at with lstat), optionally making folders."""
        parts = segments(self.name, rel)
        try:
            root = sftp.stat(self.root)
        except FileNotFoundError:
            raise ActionFailed(
                f"location {self.name}: {self.root} does not exist on {self.url.host}"
            ) from None
        if not stat.S_ISDIR(root.st_mode or 0):
            raise ActionFailed(f"location {self.name}: {self.root} is not a folder")
        current = self.root
        for part in parts[:-1]:
            current = posixpath.join(current, part)
            try:
                info = sftp.lstat(current)
            except FileNotFoundError:
                if not create_dirs:
                    return posixpath.join(self.root, *parts)
                info = self._make_folder(sftp, current)
            if stat.S_ISLNK(info.st_mode or 0):
                raise refused(
                    f"{self._url_of(current)} is a symbolic link; policyd does not follow links"
                )
            if not stat.S_ISDIR(info.st_mode or 0):
                raise refused(f"{self._url_of(current)} is not a folder")
        final = posixpath.join(current, parts[-1])
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(sftp.lstat(final).st_mode or 0):
                raise refused(
                    f"{self._url_of(final)} is a symbolic link; policyd does not follow links"
                )
        return final

    def _make_folder(self, sftp: SFTPClient, path: str) -> paramiko.SFTPAttributes:
        try:
            sftp.mkdir(path)
        except _LOST:
            raise
        except OSError as exc:
            problem: OSError | None = exc  # SFTP says "Failure" when a parallel copy made it
        else:
            problem = None
        try:
            return sftp.lstat(path)
        except FileNotFoundError:
            raise ActionFailed(
                f"cannot create {self._url_of(path)}: {problem}",
                retryable=not isinstance(problem, PermissionError),
            ) from None

    def path(self, rel: str) -> str:
        """The checked URL of `rel`, for messages (the other methods take `rel`)."""
        with self._session() as sftp:
            return self._url_of(self._resolve(sftp, rel))

    def temp_path(self, rel: str, tag: str) -> str:
        """The server path a copy of `rel` writes to before its rename."""
        with self._session() as sftp:
            return self._temp_of(self._resolve(sftp, rel), tag)

    @staticmethod
    def _temp_of(final: str, tag: str) -> str:
        return posixpath.join(posixpath.dirname(final), temp_name(posixpath.basename(final), tag))

    # ---- reading

    def _lstat(self, rel: str) -> paramiko.SFTPAttributes | None:
        with self._session() as sftp:
            try:
                return sftp.lstat(self._resolve(sftp, rel))
            except FileNotFoundError:
                return None

    def exists(self, rel: str) -> bool:
        """Whether `rel` is a regular file (a refused path is not; a lost connection
        raises: unknown is not absent)."""
        try:
            info = self._lstat(rel)
        except ActionFailed as exc:
            if exc.refused:
                return False
            raise
        return info is not None and stat.S_ISREG(info.st_mode or 0)

    def lexists(self, rel: str) -> bool:
        """Whether anything is at `rel` (a path that is refused raises)."""
        return self._lstat(rel) is not None

    def size(self, rel: str) -> int | None:
        """The size of `rel`, None when it is not there or refused (a lost connection
        raises, so a delete that relies on this replica waits instead)."""
        try:
            info = self._lstat(rel)
        except ActionFailed as exc:
            if exc.refused:
                return None
            raise
        return None if info is None else int(info.st_size or 0)

    def stat(self, rel: str) -> RemoteStat:
        info = self._lstat(rel)
        if info is None:
            raise FileNotFoundError(self._url_of(posixpath.join(self.root, rel)))
        return RemoteStat(int(info.st_size or 0), int(info.st_mode or 0), float(info.st_mtime or 0))

    def free_bytes(self) -> int | None:
        """Bytes free to policyd's user under the root (`statvfs@openssh.com`), None
        when the server does not say."""
        if not self._statvfs:
            return None
        with self._session() as sftp:
            try:
                kind, reply = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", self.root)
            except FileNotFoundError:
                raise ActionFailed(
                    f"location {self.name}: {self.root} does not exist on {self.url.host}"
                ) from None
            except TimeoutError:
                raise
            except OSError:  # the server's answer: it has no such extension
                self._statvfs = False
                return None
        if kind != CMD_EXTENDED_REPLY:
            self._statvfs = False
            return None
        # f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, ... (PROTOCOL of OpenSSH)
        fields = [reply.get_int64() for _ in range(5)]
        return fields[4] * fields[1]

    def _windows(self, sftp: SFTPClient, path: str) -> Iterator[bytes]:
        try:
            handle = sftp.open(path, "rb")
        except FileNotFoundError:
            raise ActionFailed(f"{self._url_of(path)} does not exist", retryable=False) from None
        except PermissionError:
            raise ActionFailed(f"{self._url_of(path)} cannot be read (permission denied)") from None
        with handle:
            offset = 0
            while data := b"".join(handle.readv([(offset, CHUNK)])):
                offset += len(data)
                yield data

    def read_chunks(self, rel: str) -> Iterator[bytes]:
        with self._session() as sftp:
            yield from self._windows(sftp, self._resolve(sftp, rel))

    def checksum(self, rel: str) -> Written:
        with self._session() as sftp:
            return _digest(self._windows(sftp, self._resolve(sftp, rel)))

    # ---- writing

    def remove_temp(self, rel: str, tag: str) -> bool:
        """Remove what an interrupted copy left; True when there was something."""
        try:
            with self._session() as sftp:
                return _unlink(sftp, self._temp_of(self._resolve(sftp, rel), tag))
        except ActionFailed:
            return False

    def write(
        self,
        rel: str,
        chunks: Iterator[bytes],
        tag: str,
        *,
        expected_size: int | None,
        expected_md5: str | None = None,
        mtime_ns: int | None = None,
        mode: int | None = None,
    ) -> Written:
        """Write `chunks` to `rel` through a temporary file: hashed while sent, fsync'd,
        size checked, read back and compared, then renamed into place, unless the md5
        is not `expected_md5` (then the temporary file goes and `rel` is untouched)."""
        with self._session() as sftp:
            final = self._resolve(sftp, rel, create_dirs=True)
            temp = self._temp_of(final, tag)
            try:
                _unlink(sftp, temp)  # a leftover of an earlier try: unlinked, never followed
                handle = sftp.open(temp, "wbx", bufsize=0)
            except _LOST:
                raise
            except OSError as exc:
                raise self._write_error(exc, temp) from None
            try:
                with handle:
                    handle.chmod(0o600)
                    handle.set_pipelined(True)
                    written = pipe(chunks, handle.write)
                    self._sync(sftp, handle)
                if expected_md5 is not None and written.md5 != expected_md5:
                    _unlink(sftp, temp)
                    return written
                self._check(sftp, temp, written, expected_size)
                if mode is not None:
                    sftp.chmod(temp, stat.S_IMODE(mode))
                if mtime_ns is not None:
                    seconds = mtime_ns // 1_000_000_000
                    sftp.utime(temp, (seconds, seconds))
                sftp.posix_rename(temp, final)
            except BaseException as exc:
                if not isinstance(exc, _LOST):
                    with contextlib.suppress(*_LOST, OSError):
                        _unlink(sftp, temp)
                if isinstance(exc, OSError) and not isinstance(exc, _LOST):
                    raise self._write_error(exc, temp) from None
                raise
        return written

    def _sync(self, sftp: SFTPClient, handle: paramiko.SFTPFile) -> None:
        """fsync the written file where the server can (`fsync@openssh.com`)."""
        if not self._fsync:
            return
        try:
            sftp._request(CMD_EXTENDED, "fsync@openssh.com", handle.handle)
        except TimeoutError:
            raise
        except OSError:  # the server's answer: it has no such extension
            self._fsync = False

    def _check(self, sftp: SFTPClient, temp: str, written: Written, expected: int | None) -> None:
        """The size on the server, then a re-read: what is there is what was sent."""
        stored = int(sftp.lstat(temp).st_size or 0)
        if stored != written.size:
            raise ActionFailed(
                f"{self._url_of(temp)} has {stored} bytes on the server, {written.size} were sent"
            )
        if expected is not None and written.size != expected:
            raise ActionFailed(
                f"wrote {written.size} bytes to {self._url_of(temp)}, expected {expected}"
            )
        again = _digest(self._windows(sftp, temp))
        if again != written:
            raise ActionFailed(
                f"re-read of {self._url_of(temp)} gave md5 {again.md5} ({again.size} bytes), "
                f"{written.md5} ({written.size} bytes) was sent"
            )

    def _write_error(self, exc: OSError, path: str) -> ActionFailed:
        if isinstance(exc, PermissionError):
            return ActionFailed(
                f"cannot write {self._url_of(path)} (permission denied)", retryable=False
            )
        # SFTP reports a full disk, a quota and most else as "Failure": worth a retry
        return ActionFailed(f"cannot write {self._url_of(path)}: {exc}")

    def remove(self, rel: str) -> bool:
        """Delete `rel`; False when it was already gone."""
        with self._session() as sftp:
            path = self._resolve(sftp, rel)
            try:
                return _unlink(sftp, path)
            except PermissionError:
                raise ActionFailed(
                    f"cannot remove {self._url_of(path)} (permission denied)", retryable=False
                ) from None


def _unlink(sftp: SFTPClient, path: str) -> bool:
    """Remove a name (a link itself, never its target); False when there was none."""
    try:
        sftp.remove(path)
    except FileNotFoundError:
        return False
    return True


def _digest(chunks: Iterator[bytes]) -> Written:
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return Written(digest.hexdigest(), size)
