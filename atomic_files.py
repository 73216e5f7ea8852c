"""Atomic file writes: readers (and a crash or an interrupt) see the old file or the new one, never half of it."""
import os
import tempfile


def write_atomic(path, write):
    """Create `path` through `write(temporary_path)` in the same folder, then os.replace it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
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
