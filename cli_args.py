"""argparse types of the pack's commands (`python -m qsched ...`): each checks its value while the arguments are
parsed, before any model loads, and refuses a bad one with argparse's one-line error naming the option."""
import argparse
import math
import os
import stat

from .safe_files import kind_of


class Parser(argparse.ArgumentParser):
    """argparse's parser with its errors on one line (its usage block of every option buries the error)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def integer(minimum, maximum=None, multiple_of=1):
    """An integer in [minimum, maximum] (and a multiple of `multiple_of`)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum) or value % multiple_of:
            bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            multiple = f", a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise argparse.ArgumentTypeError(f"{value} is out of range: give an integer {bounds}{multiple}")
        return value
    return parse


def number(minimum=None, maximum=None):
    """A finite float in [minimum, maximum]."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bound = " and ".join(b for b in (minimum is not None and f">= {minimum}",
                                             maximum is not None and f"<= {maximum}") if b)
            raise argparse.ArgumentTypeError(f"{value} is out of range: give a number {bound}")
        return value
    return parse


def comma_list(item, choices=None):
    """A comma-separated list, each element parsed by `item` (and one of `choices` if given); at least one."""
    def parse(text):
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one value")
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{', '.join(map(str, bad))}: choose from {', '.join(map(str, choices))}")
        return values
    return parse


def choice_of(choices, normalise=str):
    """One of `choices`, compared after `normalise` (e.g. str.upper); returns the choice as written in `choices`."""
    by_key = {normalise(c): c for c in choices}

    def parse(text):
        if normalise(text) not in by_key:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices)}")
        return by_key[normalise(text)]
    return parse


def existing_file(text):
    """A path to an existing regular file (a FIFO or device is named as what it is: reading it could hang)."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    mode = os.stat(text).st_mode
    if not stat.S_ISREG(mode):
        raise argparse.ArgumentTypeError(f"{text} is {kind_of(mode)}, not a regular file")
    return text


def _writable_folder(folder):
    if not os.path.isdir(folder):
        return f"{folder}: no such folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder}: folder not writable"
    return None


def output_file(text):
    """A file path whose folder exists and is writable (the file itself is written at the end of a run)."""
    problem = _writable_folder(os.path.dirname(os.path.abspath(text)))
    if problem or os.path.isdir(text):
        raise argparse.ArgumentTypeError(problem or f"{text}: is a folder, give a file name")
    return text


def output_folder(text):
    """A folder to write into: an existing writable folder, or a new one in an existing writable folder."""
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text}: not a folder")
    problem = _writable_folder(path) if os.path.exists(path) else _writable_folder(os.path.dirname(path))
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
