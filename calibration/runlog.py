"""Append-only JSON-lines log of evaluated calibration candidates, so an interrupted search resumes.

Line 1 is a header with the settings hash; every other line is one evaluation (a schedule, the prompt indices
it was scored on and the per-prompt scores). Each line is written with one write, flushed and fsynced, so an
interruption can at worst leave a partial last line, which is dropped (and cut off) when the log is reopened.
A log written under other settings is never mixed in: it is moved aside and a fresh log is started.
"""
import hashlib
import itertools
import json
import logging
import math
import os
import stat

from ..atomic_files import write_text_atomic
from ..safe_files import UnsafeFileError, kind_of, read_regular_file

LOG_VERSION = 1
MAX_BYTES = 1 << 30   # far past any real search (a line per scored request)
log = logging.getLogger("qsched.calibration")


class RunLogError(ValueError):
    """A run log that cannot be used; the message names the file and the problem."""


def settings_hash(settings):
    """Stable hash of the JSON-able settings that decide what a score means (model, prompts, seeds, ...)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def schedule_key(c_x, c_eps, offset=None):
    """Identity of a candidate schedule in the log (coefficients rounded so float noise cannot split it); a
    schedule without offsets (or with all-zero ones) keeps the key it had before offsets existed."""
    rows = [[round(v, 6) for v in c_x], [round(v, 6) for v in c_eps]]
    if offset is not None and any(v != 0.0 for row in offset for v in row):
        rows.append([[round(v, 6) for v in row] for row in offset])
    return json.dumps(rows, separators=(",", ":"))


def _encode_score(value):
    return value if math.isfinite(value) else None  # JSON has no NaN/inf; null means "scored worst"


def _decode_score(value):
    return float("nan") if value is None else float(value)


def _set_aside(path, stem):
    """Move `path` to `stem.old`, or `stem.2.old`, `stem.3.old`, ...: never over an earlier one. os.link fails
    if the name is taken (os.replace would not), so two processes cannot pick the same name either."""
    for number in itertools.count(1):
        aside = f"{stem}.old" if number == 1 else f"{stem}.{number}.old"
        try:
            os.link(path, aside)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links
            if os.path.lexists(aside):
                continue
            os.rename(path, aside)
            return aside
        os.remove(path)
        return aside


class RunLog:
    """Open (or create) the log at `path` for `settings`; `.done` maps schedule key -> {prompt index: score}."""

    def __init__(self, path, settings):
        self.path = os.fspath(path)
        self.settings = settings
        self.hash = settings_hash(settings)
        self.done = {}
        self._file = None
        if os.path.lexists(self.path):
            self._check_regular()
            self._resume()
        if self._file is None:
            self._start()

    def _start(self):
        header = {"kind": "header", "version": LOG_VERSION, "settings_hash": self.hash, "settings": self.settings}
        write_text_atomic(self.path, json.dumps(header, sort_keys=True, default=str) + "\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def _check_regular(self):
        """A FIFO would block the read (and the append) forever, a device never end it: only a regular file."""
        try:
            mode = os.stat(self.path).st_mode
        except OSError as error:
            raise RunLogError(f"run log {self.path} cannot be read ({error.strerror or error}); delete it to start "
                              "over") from None
        if not stat.S_ISREG(mode):
            raise RunLogError(f"run log {self.path} is {kind_of(mode)}, not a regular file; remove it to start over")

    def _resume(self):
        try:
            data = read_regular_file(self.path, MAX_BYTES)
        except UnsafeFileError as error:
            raise RunLogError(f"run log {self.path} {error}; remove it to start over") from None
        complete = data[: data.rfind(b"\n") + 1]  # a partial last line is an interrupted write
        lines = complete.decode("utf-8", errors="replace").splitlines()
        header = self._parse_header(lines[0] if lines else "")
        if header is None or header.get("settings_hash") != self.hash:
            self._move_aside(header)
            return
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
                scores = {int(i): _decode_score(s) for i, s in zip(entry["prompts"], entry["scores"], strict=True)}
                self.done.setdefault(entry["key"], {}).update(scores)
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
                raise RunLogError(f"run log {self.path} line {number} is corrupt ({error}); "
                                  "delete the file to start over") from error
        if len(complete) != len(data):
            log.warning("run log %s: dropped a partial last line left by an interrupted write", self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(len(complete))
        self._file = open(self.path, "a", encoding="utf-8")

    @staticmethod
    def _parse_header(line):
        try:
            header = json.loads(line)
        except (ValueError, RecursionError):
            return None
        return header if isinstance(header, dict) and header.get("kind") == "header" else None

    def _move_aside(self, header):
        other = header.get("settings_hash") if header else "unreadable"
        other = other if isinstance(other, str) and other.isalnum() and len(other) <= 64 else "unreadable"
        aside = _set_aside(self.path, f"{self.path}.{other}")
        log.warning("run log %s was written for other settings (%s, now %s): moved to %s, starting fresh",
                    self.path, other, self.hash, aside)

    def record(self, key, schedule_dict, prompt_indices, scores):
        entry = {"kind": "eval", "key": key, "schedule": schedule_dict,
                 "prompts": [int(i) for i in prompt_indices], "scores": [_encode_score(float(s)) for s in scores]}
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.setdefault(key, {}).update(dict(zip(entry["prompts"], map(float, scores))))

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
