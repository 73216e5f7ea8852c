"""Atomic file writes: readers (and a crash or an interrupt) see the old file or the new one, never half of it.

The temporary file sits next to the target (os.replace needs the same file system) under a hidden name,
`.<name>.<pid>.<random>.tmp`, that no folder listing of the pack shows. A write killed before os.replace leaves
it behind; the next write into the same folder removes such leftovers once their process is gone. A rewritten
file keeps its permission bits (a new one gets the usual 0666 minus umask, not mkstemp's 0600).
"""
import os
import re
import secrets
import stat
import time

STALE_AFTER_SECONDS = 60   # a leftover of a dead process untouched this long is removed
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{16}\.tmp$")
_LEGACY_TEMPORARY = r"^{}\.[a-z0-9_]{{8}}\.tmp$"   # mkstemp names written before the hidden ones
LEGACY_STALE_AFTER_SECONDS = 3600


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True   # someone else's process, or a pid we cannot check: assume alive
    return True


def remove_stale_temporaries(folder, target_name=None, now=None):
    """Remove leftovers of killed writes in `folder`; returns the names removed."""
    now = time.time() if now is None else now
    legacy = re.compile(_LEGACY_TEMPORARY.format(re.escape(target_name))) if target_name else None
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match:
            stale = not _process_exists(int(match["pid"]))
            limit = STALE_AFTER_SECONDS
        elif legacy is not None and legacy.match(name):
            stale, limit = True, LEGACY_STALE_AFTER_SECONDS
        else:
            continue
        path = os.path.join(folder, name)
        try:
            info = os.lstat(path)
            if stale and stat.S_ISREG(info.st_mode) and now - info.st_mtime >= limit:
                os.remove(path)
                removed.append(name)
        except OSError:
            continue   # gone already, or not ours to remove
    return removed


def _create_temporary(folder, target_name):
    while True:
        path = os.path.join(folder, f".{target_name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666))
            return path
        except FileExistsError:
            continue


def write_atomic(path, write):
    """Create `path` through `write(temporary_path)` in the same folder, then os.replace it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder, name)
    temporary = _create_temporary(folder, name)
    new_mode = stat.S_IMODE(os.stat(temporary).st_mode)   # 0666 minus umask, as os.open made it
    try:
        write(temporary)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = new_mode
        # also for a new file: a writer may have re-created the temporary file with its own mode (safetensors: 0600)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def write_text_atomic(path, text):
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    return write_atomic(path, write)
