"""Storage behind a location URL, as the executors use it.

`LocalStore` is a `file://` location: a folder whose paths never leave it (spec/rules.md
section 9, invariant 4). Every relative path is checked segment by segment (no `..`,
no absolute path, no NUL) and every folder on the way is checked not to be a symbolic
link, so a link planted inside a location can never make policyd read, write or
delete outside its root. Writes go to a temporary name in the target folder and are
renamed into place only after fsync, so a reader (or a crash) never sees half a file.
A copy between two local folders stops short of that: it is written and checked, and
`settle` makes it durable and puts it in place later, together with the copies that
finished meanwhile (one folder fsync for many renames, while the next copies run).

`Store` is what the executors ask of any location's storage; `SftpStore`
(`policyd/actions/sftp.py`) is the other implementation, for `sftp://` locations.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from policyd.actions.base import ActionFailed, refused

CHUNK: Final = 4 * 1024 * 1024
TEMP_MARK: Final = ".policyd-tmp"


@dataclass(frozen=True)
class Written:
    md5: str
    size: int


@dataclass(frozen=True)
class Landed:
    """A copy in its temporary file, checked against the file's md5 and size, but not
    yet durable nor in place until `settle`. No file stays open meanwhile: thousands
    of small copies may finish during one slow fsync."""

    written: Written
    temp: Path
    final: Path


class FileStat(Protocol):
    """What a copy keeps of its source: an `os.stat_result`, or the SFTP attributes."""

    @property
    def st_size(self) -> int: ...
    @property
    def st_mode(self) -> int: ...
    @property
    def st_mtime(self) -> float: ...
    @property
    def st_mtime_ns(self) -> int: ...


class Store(Protocol):
    """A location's storage as the executors use it, whatever carries the bytes.

    Paths are relative to the location's root and checked by every method (invariant
    4); `path` gives the checked path in a form for messages. `free_bytes` is None
    where the storage cannot tell. `close` lets go of what the store holds open.
    """

    name: str

    def path(self, rel: str) -> Path | str: ...
    def exists(self, rel: str) -> bool: ...
    def lexists(self, rel: str) -> bool: ...
    def size(self, rel: str) -> int | None: ...
    def free_bytes(self) -> int | None: ...
    def read_chunks(self, rel: str) -> Iterator[bytes]: ...
    def checksum(self, rel: str) -> Written: ...
    def remove_temp(self, rel: str, tag: str) -> bool: ...
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
    ) -> Written: ...
    def remove(self, rel: str) -> bool: ...
    def stat(self, rel: str) -> FileStat: ...
    def close(self) -> None: ...


def temp_name(name: str, tag: str) -> str:
    """The temporary name a copy writes to before its rename; `tag` names the action,
    so a resumed apply finds (and removes) what an interrupted one left."""
    return f".{name}.{tag}{TEMP_MARK}"


def segments(location: str, rel: str) -> list[str]:
    """The segments of a relative path inside a location, refused when it could leave
    the root (an absolute path, `..`, `.`, an empty segment or a NUL)."""
    if not rel or "\x00" in rel or rel.startswith("/"):
        raise refused(f"path {rel!r} is not a relative path inside {location}")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise refused(f"path {rel!r} would leave location {location}")
    return parts


class LocalStore:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root

    def mounted(self) -> bool:
        return self.root.is_dir()

    def path(self, rel: str, *, create_dirs: bool = False) -> Path:
        """The absolute path of `rel`, with no symbolic link on the way from the root."""
        if not self.mounted():
            raise ActionFailed(f"location {self.name} is not mounted at {self.root}")
        parts = segments(self.name, rel)
        current = self.root
        for part in parts[:-1]:
            current = current / part
            try:
                info = os.lstat(current)
            except FileNotFoundError:
                if not create_dirs:
                    return self.root.joinpath(*parts)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(current)
                info = os.lstat(current)
            if stat.S_ISLNK(info.st_mode):
                raise refused(f"{current} is a symbolic link; policyd does not follow links")
            if not stat.S_ISDIR(info.st_mode):
                raise refused(f"{current} is not a folder")
        final = current / parts[-1]
        if os.path.islink(final):
            raise refused(f"{final} is a symbolic link; policyd does not follow links")
        return final

    def exists(self, rel: str) -> bool:
        try:
            return self.path(rel).is_file()
        except ActionFailed:
            return False

    def lexists(self, rel: str) -> bool:
        """Whether anything is at `rel` (a path that is refused raises)."""
        return os.path.lexists(self.path(rel))

    def size(self, rel: str) -> int | None:
        try:
            return os.lstat(self.path(rel)).st_size
        except (FileNotFoundError, ActionFailed):
            return None

    def free_bytes(self) -> int | None:
        info = os.statvfs(self.root)
        return info.f_bavail * info.f_frsize

    def read_chunks(self, rel: str) -> Iterator[bytes]:
        path = self.path(rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ActionFailed(f"{path} does not exist", retryable=False) from None
        except PermissionError:
            raise ActionFailed(f"{path} cannot be read (permission denied)") from None
        try:
            while chunk := os.read(fd, CHUNK):
                yield chunk
        finally:
            os.close(fd)

    def checksum(self, rel: str) -> Written:
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        for chunk in self.read_chunks(rel):
            digest.update(chunk)
            size += len(chunk)
        return Written(digest.hexdigest(), size)

    def temp_path(self, rel: str, tag: str) -> Path:
        final = self.path(rel)
        return final.with_name(temp_name(final.name, tag))

    def remove_temp(self, rel: str, tag: str) -> bool:
        """Remove what an interrupted copy left; True when there was something."""
        try:
            self.temp_path(rel, tag).unlink()
            return True
        except (FileNotFoundError, ActionFailed):
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
        """Write `chunks` to `rel` through a temporary file: hashing overlaps writing
        (a reader thread reads and hashes while this one writes), then the checks and
        `settle` (fsync, atomic rename, fsync of the folder) before it returns. Bytes
        whose md5 is not `expected_md5` are never renamed into place: the temporary
        file goes, whatever was at `rel` stays, and the returned checksum tells the
        caller."""
        landed = self._land(
            rel,
            tag,
            lambda fd: pipe(chunks, lambda data: _write_all(fd, data)),
            expected_size,
            expected_md5,
            mtime_ns,
            mode,
        )
        if isinstance(landed, Written):
            return landed
        error = settle([landed])[0]
        if error is not None:
            raise error
        return landed.written

    def copy_local(
        self,
        source: LocalStore,
        source_rel: str,
        rel: str,
        tag: str,
        *,
        expected_size: int | None,
        expected_md5: str | None = None,
        mtime_ns: int | None = None,
        mode: int | None = None,
    ) -> Landed | Written:
        """A copy between two local folders: read once, hashed, written to the
        temporary file with O_DIRECT (`_direct_copy`), so the checksum is of the bytes
        written. It returns before they are durable: the caller `settle`s the `Landed`
        copy (fsync, rename into place, fsync of the folder), together with others,
        before it records the copy anywhere. Bytes whose md5 is not `expected_md5`
        come back as their `Written` checksum only, never renamed into place (the
        temporary file removed). Where the target's file system takes no O_DIRECT
        writes the kernel copies (copy_file_range, a second thread hashing what
        landed), and where it cannot copy between the two, Python does, as `write`."""
        source_path = source.path(source_rel)
        try:
            src = os.open(source_path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ActionFailed(f"{source_path} does not exist", retryable=False) from None
        checks = (expected_size, expected_md5, mtime_ns, mode)
        try:
            try:
                return self._land(
                    rel, tag, lambda fd: _direct_copy(src, fd), *checks, flags=os.O_DIRECT
                )
            except _NoDirectIO:
                return self._land(rel, tag, lambda fd: _kernel_copy(src, fd), *checks)
        except _NoKernelCopy:
            chunks = source.read_chunks(source_rel)
            return self._land(
                rel, tag, lambda fd: pipe(chunks, lambda data: _write_all(fd, data)), *checks
            )
        finally:
            os.close(src)

    def _land(
        self,
        rel: str,
        tag: str,
        fill: Callable[[int], Written],
        expected_size: int | None,
        expected_md5: str | None,
        mtime_ns: int | None,
        mode: int | None,
        *,
        flags: int = 0,
    ) -> Landed | Written:
        """`fill` writes the temporary file of `rel` (open for reading and writing, with
        `flags` too) and returns the checksum of its bytes; then the checks and the
        source's mode and mtime. Bytes whose md5 is not `expected_md5` are never
        renamed into place: the temporary file goes and only their checksum comes
        back. The rest is left open, not yet durable, for `settle`."""
        final = self.path(rel, create_dirs=True)
        temp = final.with_name(temp_name(final.name, tag))
        try:
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | flags, 0o600)
        except OSError as exc:
            if flags & os.O_DIRECT and exc.errno == errno.EINVAL:
                temp.unlink(missing_ok=True)
                raise _NoDirectIO from None
            raise _write_error(exc, temp) from None
        try:
            written = fill(fd)
            if expected_md5 is not None and written.md5 != expected_md5:
                raise _Mismatch
            if expected_size is not None and written.size != expected_size:
                raise ActionFailed(
                    f"wrote {written.size} bytes to {final}, expected {expected_size}",
                    retryable=True,
                )
            if mode is not None:
                os.fchmod(fd, stat.S_IMODE(mode))
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        except _Mismatch:
            os.close(fd)
            temp.unlink(missing_ok=True)
            return written
        except BaseException as exc:
            os.close(fd)
            temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _write_error(exc, temp) from None
            raise
        os.close(fd)
        return Landed(written, temp, final)

    def remove(self, rel: str) -> bool:
        """Delete `rel`; False when it was already gone."""
        path = self.path(rel)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    def stat(self, rel: str) -> os.stat_result:
        return os.lstat(self.path(rel))

    def close(self) -> None:
        """Nothing to let go of: every method opens and closes what it uses."""


def settle(landed: Sequence[Landed]) -> list[ActionFailed | None]:
    """Make checked copies durable and put them in place, many at once: each file's
    bytes to disk (fsync) and only then its rename, so no crash ever leaves half a
    file under the final name; then one fsync per folder for the renames. A copy is
    recorded only after this, so a crash before it leaves a temporary file (removed
    when the apply resumes) or an unrecorded file at the final name (written again),
    never a recorded replica that is not on disk. One outcome per copy, in order:
    None, or why that copy did not settle (its temporary file removed)."""
    errors: list[ActionFailed | None] = [None] * len(landed)
    for index, item in enumerate(landed):
        try:
            _fsync_file(item.temp)
            os.replace(item.temp, item.final)
        except OSError as exc:
            item.temp.unlink(missing_ok=True)
            errors[index] = _write_error(exc, item.temp)
    folders: dict[Path, list[int]] = {}
    for index, item in enumerate(landed):
        if errors[index] is None:
            folders.setdefault(item.final.parent, []).append(index)
    for folder, members in folders.items():
        try:
            _fsync_dir(folder)
        except OSError as exc:
            for index in members:
                errors[index] = _write_error(exc, folder)
    return errors


class _Mismatch(Exception):
    """The bytes written are not the file's: never renamed into place."""


class _NoKernelCopy(Exception):
    """copy_file_range cannot copy between these two files; copy through Python."""


class _NoDirectIO(Exception):
    """The target's file system does not take O_DIRECT writes (or not of these
    buffers); copy through the page cache."""


DIRECT_CHUNK: Final = 8 * 1024 * 1024
#: O_DIRECT wants buffers, offsets and lengths in whole logical blocks: 4 KiB covers
#: the 512-byte and 4 KiB ones of disks and SSDs (a larger one refuses the first write,
#: and the copy goes through the page cache).
DIRECT_ALIGN: Final = 4096
_buffers: list[mmap.mmap] = []
_buffers_lock = threading.Lock()


def _take_buffers(count: int) -> list[mmap.mmap]:
    """Page-aligned buffers for a direct copy, kept from one copy to the next: fresh
    ones cost the kernel a page fault and a zeroed page every 4 KiB."""
    with _buffers_lock:
        taken = [_buffers.pop() for _ in range(min(count, len(_buffers)))]
    return taken + [mmap.mmap(-1, DIRECT_CHUNK) for _ in range(count - len(taken))]


def _give_buffers(buffers: list[mmap.mmap]) -> None:
    with _buffers_lock:
        _buffers.extend(buffers)


def _direct_copy(src: int, dst: int) -> Written:
    """Copy `src` into `dst` (opened with O_DIRECT) through three aligned buffers: a
    second thread reads the source into one and hashes it while this one writes
    another straight to the device. The checksum is of the very buffers written. The
    page cache gets no second copy of every file: putting the copy's pages there cost
    the kernel 40% of the time of the md5 itself (2 GB on a 2-core machine), and it
    left all the bytes to be written at the fsync, where here they reach the device
    while the next ones are hashed. The last block is written whole, zeros after the
    end of the file, which is then cut to its size."""
    digest = hashlib.md5(usedforsecurity=False)
    buffers = _take_buffers(3)
    free: queue.Queue[mmap.mmap | None] = queue.Queue()
    for buffer in buffers:
        free.put(buffer)
    filled: queue.Queue[tuple[mmap.mmap, int] | BaseException | None] = queue.Queue()

    def read_and_hash() -> None:
        offset = 0
        try:
            while (buffer := free.get()) is not None:
                view = memoryview(buffer)
                got = 0
                while got < DIRECT_CHUNK and (read := os.preadv(src, [view[got:]], offset + got)):
                    got += read
                digest.update(view[:got])
                filled.put((buffer, got))
                if got < DIRECT_CHUNK:
                    filled.put(None)
                    return
                offset += got
        except BaseException as exc:  # the writer raises it
            filled.put(exc)

    reader = threading.Thread(target=read_and_hash, daemon=True)
    reader.start()
    size = 0
    try:
        while (item := filled.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            buffer, got = item
            if got:
                whole = -(-got // DIRECT_ALIGN) * DIRECT_ALIGN
                buffer[got:whole] = bytes(whole - got)
                _write_direct(dst, memoryview(buffer)[:whole], size)
                size += got
            free.put(buffer)
    finally:
        free.put(None)  # the reader stops at its next buffer, if it has not
        reader.join()
        _give_buffers(buffers)
    os.ftruncate(dst, size)
    return Written(digest.hexdigest(), size)


def _write_direct(fd: int, data: memoryview, offset: int) -> None:
    while data:
        try:
            done = os.pwritev(fd, [data], offset)
        except OSError as exc:
            if offset == 0 and exc.errno == errno.EINVAL:
                raise _NoDirectIO from None
            raise
        data = data[done:]
        offset += done


KERNEL_CHUNK: Final = 32 * 1024 * 1024


def _kernel_copy(src: int, dst: int) -> Written:
    """Copy `src` to `dst` with copy_file_range, chunk by chunk, while a thread reads
    back each chunk that has landed in `dst` and hashes it (both release the GIL)."""
    digest = hashlib.md5(usedforsecurity=False)
    landed: queue.Queue[tuple[int, int] | None] = queue.Queue()
    failure: list[BaseException] = []

    def hash_landed() -> None:
        # one buffer for the whole file: a fresh 4 MiB bytes per read costs the kernel
        # as much as the copy itself (every page of it zeroed, then copied into)
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        try:
            while (span := landed.get()) is not None:
                offset, length = span
                while length:
                    got = os.preadv(dst, [view[: min(length, CHUNK)]], offset)
                    if not got:
                        raise OSError(errno.EIO, "the copy is shorter than what was written")
                    digest.update(view[:got])
                    offset += got
                    length -= got
        except BaseException as exc:  # the copy goes on; its caller raises this after
            failure.append(exc)

    hasher = threading.Thread(target=hash_landed, daemon=True)
    hasher.start()
    size = 0
    try:
        while True:
            try:
                done = os.copy_file_range(src, dst, KERNEL_CHUNK, None, size)
            except OSError as exc:
                if size == 0 and exc.errno in (
                    errno.EXDEV,
                    errno.ENOSYS,
                    errno.EINVAL,
                    errno.EOPNOTSUPP,
                ):
                    raise _NoKernelCopy from None
                raise
            if done == 0:
                break
            landed.put((size, done))
            size += done
    finally:
        landed.put(None)
        hasher.join()
    if failure:
        raise failure[0]
    return Written(digest.hexdigest(), size)


def pipe(chunks: Iterator[bytes], write: Callable[[bytes], None]) -> Written:
    """Read and hash in one thread, write in this one (hashlib, os.write and sockets
    release the GIL), with a small bounded queue between them. When writing fails,
    the reader stops at its next chunk instead of reading the rest of the source."""
    digest = hashlib.md5(usedforsecurity=False)
    handoff: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                digest.update(chunk)
                handoff.put(chunk)
            handoff.put(None)
        except BaseException as exc:
            handoff.put(exc)
        finally:
            # a source that holds a connection (SFTP) gives it back now, not at GC
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=produce, daemon=True)
    reader.start()
    size = 0
    try:
        while True:
            item = handoff.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            write(item)
            size += len(item)
    finally:
        stop.set()
        while reader.is_alive():
            try:
                handoff.get_nowait()
            except queue.Empty:
                reader.join(0.05)
    return Written(digest.hexdigest(), size)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        done = os.write(fd, view)
        view = view[done:]


def _write_error(exc: OSError, path: Path) -> ActionFailed:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ActionFailed(f"no space left on the device of {path}")
    if isinstance(exc, PermissionError):
        return ActionFailed(f"cannot write {path} (permission denied)", retryable=False)
    return ActionFailed(f"cannot write {path}: {exc.strerror or exc}")


def _fsync_file(path: Path) -> None:
    """fsync through a descriptor of its own: the file's written data and its inode go
    to disk whichever descriptor wrote them."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
