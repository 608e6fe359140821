"""Small filesystem helpers: an inter-process lock, atomic publishing of files and directories, sizes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock on `path` (created if missing); blocks until it is free.

    Multirun jobs and parallel tests build the same cached artefacts; the lock makes the first
    builder win and the others reuse its result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to `final` in one step.

    A crash half-way leaves only a `.tmp-*` directory behind, never a half-written `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def path_size(path: str | os.PathLike) -> int:
    """Bytes held by a file, or by every file under a directory (a DeepSpeed checkpoint); 0 if missing."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def remove_path(path: str | os.PathLike) -> None:
    """Delete a file, a link or a directory tree; nothing if it is missing."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_path(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Publish a finished `tmp` (a file or a directory, a sibling of `final`) as `final`, replacing what is there.

    A file, or a directory where `final` is missing, moves in one rename. A directory over an existing one
    is swapped with it in one step where the kernel can (renameat2), then the old one deleted; elsewhere the
    old one is first renamed aside, so `final` is at any moment the old or the new whole, or briefly absent
    (the old whole then sits beside it as `.old-<name>`), never half-written.
    """
    tmp, final = Path(tmp), Path(final)
    if not (tmp.is_dir() and (final.exists() or final.is_symlink())):
        os.replace(tmp, final)
    elif _exchange(tmp, final):
        remove_path(tmp)  # now the old one
    else:
        aside = final.with_name(f".old-{final.name}")
        remove_path(aside)
        os.replace(final, aside)
        os.replace(tmp, final)
        remove_path(aside)
    fsync_directory(final.parent)


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (a crash right after it keeps the new name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """`dst` as hard links to `src` (a file, or every file of a directory): no data written. Copies where the
    filesystem refuses links; returns whether it linked."""
    src, dst = Path(src), Path(dst)
    try:
        if src.is_dir():
            shutil.copytree(src, dst, copy_function=os.link)
        else:
            os.link(src, dst)
        return True
    except OSError:
        remove_path(dst)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return False
