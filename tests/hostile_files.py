"""Hostile entries for a folder the pack reads (no tests here): what a careless user or an attacker can leave in
the preset or scorer folder. Each maker creates `folder/name` and returns what a reader must do with it."""
import contextlib
import json
import os
import socket
import threading

DEEP = 100_000   # far past Python's recursion limit


def deep_json(depth=DEEP):
    return "[" * depth + "]" * depth


def make_regular(folder, name, text):
    with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
        handle.write(text)


def make_deep_json(folder, name):
    make_regular(folder, name, deep_json())


def make_deep_object(folder, name):
    make_regular(folder, name, '{"a":' * DEEP + "1" + "}" * DEEP)


def make_fifo(folder, name):
    os.mkfifo(os.path.join(folder, name))


def make_dev_zero_link(folder, name):
    os.symlink("/dev/zero", os.path.join(folder, name))


def make_dev_urandom_link(folder, name):
    os.symlink("/dev/urandom", os.path.join(folder, name))


def make_directory(folder, name):
    os.mkdir(os.path.join(folder, name))


def make_dangling_link(folder, name):
    os.symlink(os.path.join(folder, "no-such-target-" + name), os.path.join(folder, name))


def make_self_loop_link(folder, name):
    os.symlink(name, os.path.join(folder, name))


def make_huge_sparse(folder, name, size=1 << 34):
    """A 16 GiB file that takes no disk space: reading it whole would exhaust memory."""
    with open(os.path.join(folder, name), "wb") as handle:
        handle.truncate(size)


def make_socket(folder, name):
    path = os.path.join(folder, name)
    if len(path.encode()) >= 100:   # AF_UNIX path limit
        return make_fifo(folder, name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.close()   # the socket file stays


def make_link_outside(folder, name, outside_file):
    """A link to a file outside the folder (here: a valid preset, which must still not be read)."""
    os.symlink(outside_file, os.path.join(folder, name))


# name -> maker for entries that must never be read (or never block a reader)
NEVER_READ = {
    "fifo": make_fifo, "dev-zero": make_dev_zero_link, "dev-urandom": make_dev_urandom_link,
    "directory": make_directory, "dangling": make_dangling_link, "loop": make_self_loop_link,
    "socket": make_socket,
}
# name -> maker for regular files that must be refused with a reason (and not crash the list)
REFUSED_CONTENT = {"deep-array": make_deep_json, "deep-object": make_deep_object, "huge-sparse": make_huge_sparse}


def snapshot(folder):
    """{relative path: (kind, content or link target)} of everything in `folder`, without reading special files."""
    state = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            info = os.lstat(path)
            if os.path.islink(path):
                state[relative] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[relative] = ("dir", None)
            elif not os.path.isfile(path) or info.st_size > (1 << 20):
                state[relative] = ("special" if not os.path.isfile(path) else "big", info.st_size, info.st_mode)
            else:
                with open(path, "rb") as handle:
                    state[relative] = ("file", handle.read(), info.st_mode)
    return state


def valid_preset_text(**changes):
    preset = {"format": "qsched-preset", "version": 1, "example": False, "notes": "",
              "model": {"name": "tiny", "sha256": None, "family": None}, "quant": "W4A8", "sampler": "lcm",
              "steps": 2, "c_x": [0.95, 1.0], "c_eps": [1.05, 1.0], "scorer": {"name": "s", "k": 2.0},
              "prompts_hash": None, "n_prompts": 2, "seed": 0, "cfg": 1.0, "scores": {"identity": 0.1, "best": 0.2},
              "search": {}, "created": "2026-01-01T00:00:00+00:00", "pack_version": "0.1.0"}
    preset.update(changes)
    return json.dumps(preset)


class FifoFeeder:
    """A reader that opens a FIFO blocks until a writer comes: be that writer, until stopped, so that a reader
    which should never have opened the FIFO reads a valid preset from it (and its test fails) instead of hanging.
    Opening a FIFO for writing while nobody reads it fails at once (ENXIO): then nothing is written."""

    def __init__(self, path, text=""):
        self.path, self.text, self.stop, self.fed = path, text, threading.Event(), False
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self):
        while not self.stop.wait(0.01):
            try:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                continue
            self.fed = True
            try:
                os.write(descriptor, self.text.encode())
            except OSError:   # the reader went away
                pass
            finally:
                os.close(descriptor)

    def close(self):
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def planted(maker, folder, name, fifo_text="junk"):
    """`maker(folder, name)`, yielding its path; a FIFO is fed (FifoFeeder) while the block runs, and after the
    block it must not have been opened for reading."""
    maker(folder, name)
    path = os.path.join(folder, name)
    feeder = FifoFeeder(path, fifo_text) if maker is make_fifo else None
    try:
        yield path
    finally:
        if feeder:
            feeder.close()
    assert feeder is None or not feeder.fed, f"{path}: a FIFO was opened for reading"
