"""Atomic writers shared by every output of nupes-sim (model, golden, hex folder, simulate
arrays, audit reports).

Contract: the final path holds either its previous content or the complete new content,
never a partial file, whatever happens to the writing process (exception, SIGKILL, power
loss after fsync). Everything is first written under a temporary name in the same folder,
fsynced, then renamed into place (os.replace for files; an atomic exchange for folders).

Temporary names are ``.<final name>.nupes-tmp.<pid>.<random>``. They are removed on every
failure path that Python sees; what a killed process left (SIGKILL cannot be caught) is
removed by the next atomic write of the same final path (`clean_stale`: any temp of that
name whose writer pid is no longer alive).

API:
    with atomic_path(path) as tmp: ...        # write the file `tmp` yourself (h5py, np.save, ...)
    with atomic_open(path, "w") as fh: ...    # a file object
    write_bytes(path, data) / write_text(path, text) / save_npy(path, array)
    with atomic_dir(path, may_replace=fn) as tmpdir: ...   # fill a fresh folder; swapped in whole
"""

import contextlib
import ctypes
import errno
import os
import secrets
import shutil

TAG = ".nupes-tmp."


def _tmp_name(path):
    d, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(d, f".{base}{TAG}{os.getpid()}.{secrets.token_hex(4)}")


def temp_name(path):
    """A fresh temporary name for `path` (see the module doc); the caller creates it."""
    return _tmp_name(path)


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(path):
    """Temporary names of `path` left by writers that are no longer running."""
    d, base = os.path.split(os.path.abspath(os.fspath(path)))
    prefix = f".{base}{TAG}"
    out = []
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in names:
        if not n.startswith(prefix):
            continue
        pid = n[len(prefix) :].split(".")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            out.append(os.path.join(d, n))
    return out


def clean_stale(path):
    """Remove the temporaries of `path` left by killed writers (files or folders)."""
    for t in stale_temps(path):
        _remove(t)


def _remove(p):
    try:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.unlink(p)
    except FileNotFoundError:
        pass


def _fsync_dir(d):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(p):
    with open(p, "rb") as fh:
        os.fsync(fh.fileno())


def _usual_mode(p, directory=False):
    um = os.umask(0)
    os.umask(um)
    os.chmod(p, (0o777 if directory else 0o666) & ~um)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in the folder of `path`; on success it is fsynced and renamed
    onto `path`; on any exception it is removed and `path` is untouched."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise FileNotFoundError(f"folder {d} of output {path} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"output {path} is a folder")
    clean_stale(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise RuntimeError(f"internal: nothing was written to the temporary file of {path}")
        _fsync_file(tmp)
        _usual_mode(tmp)
        os.replace(tmp, path)
        _fsync_dir(d)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """A file object writing atomically to `path` (see atomic_path); mode 'w' or 'wb'."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode {mode!r}; allowed 'w', 'wb'")
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()


def write_bytes(path, data):
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path, text):
    with atomic_open(path, "w") as fh:
        fh.write(text)


def save_npy(path, array):
    """np.save, atomically (the final name is exactly `path`: no '.npy' is appended)."""
    import numpy as np

    with atomic_open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


# ---- folders ---------------------------------------------------------------------------

_RENAME_EXCHANGE = 2


def _exchange(a, b):
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False if the
    system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD = -100
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else errno.EINVAL):
        return False
    raise OSError(e, os.strerror(e), b)


@contextlib.contextmanager
def atomic_dir(path, may_replace=None):
    """Yield a fresh temporary folder next to `path`; on success every file in it is fsynced
    and the folder takes the place of `path` in one atomic exchange (the previous folder, if
    any, is then removed). A folder that already exists at `path` is replaced only if it is
    empty or `may_replace(path)` is true (e.g. it holds a previous export); otherwise
    FileExistsError, before anything is written."""
    path = os.path.abspath(os.fspath(path))
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"folder {d} of output {path} does not exist")
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise FileExistsError(f"output folder {path} exists and is not a folder")
        if os.listdir(path) and not (may_replace and may_replace(path)):
            raise FileExistsError(
                f"output folder {path} exists, is not empty and is not a previous "
                f"output of this command; remove it or choose another"
            )
    clean_stale(path)
    tmp = _tmp_name(path)
    os.mkdir(tmp)
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for fn in files:
                _fsync_file(os.path.join(root, fn))
            _fsync_dir(root)
        _usual_mode(tmp, directory=True)
        if os.path.isdir(path):
            if not _exchange(tmp, path):
                # no atomic exchange: move the old folder aside under a temp name (a killed
                # run then leaves it for clean_stale), then rename the new one in.
                old = _tmp_name(path)
                os.rename(path, old)
                os.rename(tmp, path)
                tmp = old
        else:
            os.rename(tmp, path)
        _fsync_dir(d)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


__all__ = [
    "atomic_path",
    "atomic_open",
    "atomic_dir",
    "write_bytes",
    "write_text",
    "save_npy",
    "clean_stale",
    "stale_temps",
    "temp_name",
    "TAG",
]
