"""Reading files that someone else put into a folder: only what is really there, only regular files, bounded.

- Only regular files are read: a FIFO would block the reader forever, a link to /dev/zero never ends. The file
  is opened non-blocking and checked with fstat on the open descriptor, so swapping it after a check is no way
  around that.
- The size is checked before reading, and no more than the limit is ever read.
- With `folder` given, the file's real path (symlinks resolved) must lie inside the folder's real path.
- JSON is strict: no NaN/Infinity (the browser's JSON.parse refuses them), no duplicate keys (the last one would
  win silently) and at most MAX_JSON_DEPTH levels of nesting (Python's parser raises RecursionError near 1000
  levels, and anything that walks the result recursively fails sooner).
"""
import json
import math
import os
import stat

MAX_JSON_DEPTH = 64
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class UnsafeFileError(ValueError):
    """A file that is refused before or while reading it; the message says why."""


def kind_of(mode):
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def is_inside(folder, path):
    """True if `path`, every symlink resolved, lies inside `folder` (also resolved)."""
    real_folder, real_path = os.path.realpath(folder), os.path.realpath(path)
    try:
        return os.path.commonpath([real_folder, real_path]) == real_folder and real_path != real_folder
    except ValueError:  # different drives
        return False


def read_regular_file(path, max_bytes, folder=None):
    """The bytes of `path` if it is a regular file of at most `max_bytes` (and inside `folder`, if given).

    Raises UnsafeFileError for anything else; OSError (e.g. FileNotFoundError) passes through."""
    if folder is not None and not is_inside(folder, path):
        raise UnsafeFileError("is a link leading outside its folder; only files inside the folder are read")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):   # not even opened; fstat below covers a swap between here and the open
        raise UnsafeFileError(f"is {kind_of(mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)   # non-blocking: opening a FIFO does not wait for a writer
    with open(descriptor, "rb", closefd=True) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"is {kind_of(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeFileError(f"is {info.st_size} bytes, more than the {max_bytes} bytes allowed")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise UnsafeFileError(f"is more than the {max_bytes} bytes allowed")
    return data


class JSONDocumentError(ValueError):
    """Text that is not a strict, reasonably nested JSON document; the message says where it went wrong."""


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def _unique_keys(pairs):
    keys = set()
    for key, _ in pairs:
        if key in keys:
            raise ValueError(f"duplicate key {key!r}")
        keys.add(key)
    return dict(pairs)


def json_depth(value):
    """Nesting depth of a parsed JSON value (a scalar is 0, [] is 1), computed without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_json(data, max_depth=MAX_JSON_DEPTH, allow_nan=False):
    """Parse bytes (UTF-8) or text as strict JSON; JSONDocumentError says what is wrong. allow_nan: read
    NaN/Infinity as floats, for a caller that names the field holding one (see non_finite_path)."""
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text, parse_constant=float if allow_nan else _refuse_constant,
                           object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as error:
        raise JSONDocumentError(f"not UTF-8 text ({error})") from error
    except RecursionError as error:
        raise JSONDocumentError(f"nested more than {max_depth} levels deep") from error
    except ValueError as error:  # JSONDecodeError, our refusals, integers past Python's digit limit
        raise JSONDocumentError(f"not valid JSON: {error}") from error
    if json_depth(value) > max_depth:
        raise JSONDocumentError(f"nested more than {max_depth} levels deep")
    return value


def non_finite_path(value):
    """'a.b[2]' of the first NaN or infinity in a parsed JSON value (depth-first), or None."""
    stack = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return path or "the document"
        if isinstance(item, dict):
            stack.extend((child, f"{path}.{key}" if path else str(key)) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in reversed(list(enumerate(item))))
    return None


def read_json_file(path, max_bytes, folder=None, max_depth=MAX_JSON_DEPTH):
    """read_regular_file + parse_json."""
    return parse_json(read_regular_file(path, max_bytes, folder), max_depth)
