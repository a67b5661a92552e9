"""Atomic writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

    write_file(path, text_or_bytes)          # write_text / write_bytes
    with replacing(path) as tmp:             # any writer that takes a path (torch.save, np.save...)
        torch.save(state, tmp)
    with replacing_dir(bundle) as tmp:       # a directory (a bundle, a teacher): built in tmp
        ...                                  # then swapped in for the old one
    with replacing_dir(bundle, keep=True) as tmp:   # tmp starts as a copy (hard links) of the
        write_file(tmp / "card.json", ...)           # old one: change a few files of a bundle

A file is written to a temporary file in the same directory, flushed to disk (fsync) and
renamed over the target with os.replace, which POSIX makes atomic; the directory is then
fsynced so the rename itself survives a power cut.  A directory is built in a temporary
sibling and exchanged with the old one in one step (Linux renameat2 RENAME_EXCHANGE; where
that is missing, two renames, with the old copy kept as a sibling until the new one is in
place).  A process killed while writing leaves only a temporary sibling, `.NAME.partial-PID-*`,
which no reader opens; the next write of the same path removes those whose writer is dead
(`process_alive`, which the pipeline's stages also use to notice that their supervisor died).

With keep=True the copy is made of hard links, so it costs no space; a file in it must then be
replaced (write_file, replacing), never written in place, or the old directory would change too.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import tempfile
from pathlib import Path

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # a platform without directory fds: the rename is still atomic, only less durable
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | Path):
    """Yield a temporary path beside `path` (same suffix, for writers such as np.save that add
    one); on a clean exit it is fsynced and renamed over `path`, on an error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make every result private
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_file(path: str | Path, data: str | bytes) -> Path:
    """path.write_text / write_bytes, atomically."""
    path = Path(path)
    with replacing(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux >= 3.15); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a))


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs; one that has exited but is not yet reaped (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    if not os.path.exists("/proc/self/stat"):
        return True  # no /proc: the signal test is all there is
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False  # it went while we looked


def _prefix(path: Path) -> str:
    return f".{path.name}.partial-{os.getpid()}-"


def _remove_stale(path: Path) -> None:
    """Temporary siblings of `path` (files or directories) whose writer is no longer running."""
    start = len(f".{path.name}.partial-")
    for other in path.parent.glob(f".{glob.escape(path.name)}.partial-*"):
        try:
            pid = int(other.name[start:].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not process_alive(pid):
            if other.is_dir() and not other.is_symlink():
                shutil.rmtree(other, ignore_errors=True)
            else:
                other.unlink(missing_ok=True)


def _link_tree(src: Path, dst: Path) -> None:
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(directory) / name)
        _fsync_dir(Path(directory))


@contextlib.contextmanager
def replacing_dir(path: str | Path, keep: bool = False):
    """Yield a temporary directory beside `path`; on a clean exit it replaces `path` (and
    whatever was there) in one step, on an error it is removed and `path` is untouched.
    keep: start from hard links of the current contents (see the module's note)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        if keep and path.is_dir():
            _link_tree(path, tmp)
        yield tmp
        _fsync_tree(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):  # tmp now holds the old contents
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        else:
            old = Path(tempfile.mkdtemp(prefix=_prefix(path) + "old-", dir=path.parent))
            os.rename(path, old / "old")
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
            _fsync_dir(path.parent)
            return
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
