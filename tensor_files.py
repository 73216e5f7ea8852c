""".safetensors files checked before a library reads them, and tensors checked for NaN/infinity after.

safetensors' own errors (HeaderTooLarge, InvalidHeaderDeserialization, ...) name neither the file nor what is
wrong in words, and an empty or truncated file reaches them too. check_safetensors reads only the 8-byte header
length and the JSON header (bounded, from a regular file opened non-blocking, see safe_files.py) and checks every
tensor's byte range against its dtype, its shape and the file's size, so a header that claims terabytes is refused
before anything is allocated. TensorFileError names the file and the problem in one line.
"""
import json
import math
import os
import stat
import struct

from .safe_files import UnsafeFileError, kind_of

MAX_HEADER_BYTES = 100 << 20   # safetensors' own limit
ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
              "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class TensorFileError(ValueError):
    """A tensor file that is refused; the message names the file and what is wrong."""


def _size_text(count):
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"


def check_regular(path, what="file"):
    """Raise TensorFileError unless `path` is a regular file (a FIFO or device would block or never end a read)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise TensorFileError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise TensorFileError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise TensorFileError(f"{what} {path} is {kind_of(mode)}, not a regular file")


def _read_header_bytes(path):
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):   # not even opened; fstat below covers a swap between here and the open
        raise UnsafeFileError(f"is {kind_of(mode)}, not a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    with open(os.open(path, flags), "rb", closefd=True) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"is {kind_of(info.st_mode)}, not a regular file")
        size = info.st_size
        if size == 0:
            raise UnsafeFileError("is empty (0 bytes)")
        if size < 8:
            raise UnsafeFileError(f"is {size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > MAX_HEADER_BYTES:
            raise UnsafeFileError(f"claims a {_size_text(length)} header, more than the {_size_text(MAX_HEADER_BYTES)} "
                                  "safetensors allows (corrupt, or not a safetensors file)")
        if length > size - 8:
            raise UnsafeFileError(f"claims a {_size_text(length)} header but holds {_size_text(size - 8)} after the "
                                  "length (truncated, or not a safetensors file)")
        return handle.read(length), size, length


def check_safetensors(path, what="file"):
    """The header {name: {dtype, shape, data_offsets}} of a well-formed .safetensors file (without
    __metadata__), or TensorFileError naming the file and the first problem: not a regular file, empty, a header
    length past the file's end, a header that is not JSON, a tensor whose bytes do not match its dtype and shape or
    lie past the file's end."""
    def refuse(problem):
        return TensorFileError(f"{what} {path} {problem}")

    try:
        raw, size, length = _read_header_bytes(path)
    except UnsafeFileError as error:
        raise refuse(str(error)) from None
    except OSError as error:
        raise refuse(f"cannot be read ({error.strerror or error})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise refuse("has a header that is not JSON (corrupt, or not a safetensors file)") from None
    if not isinstance(header, dict):
        raise refuse("has a header that is not a JSON object (corrupt, or not a safetensors file)")
    data_bytes = size - 8 - length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise refuse(f"describes tensor {name!r} with {type(info).__name__}, not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            raise refuse(f"gives tensor {name!r} the shape {shape!r}; a shape is a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise refuse(f"gives tensor {name!r} the byte range {offsets!r}")
        if not isinstance(dtype, str):
            raise refuse(f"gives tensor {name!r} the dtype {dtype!r}")
        if dtype in ITEM_BYTES:
            needed = math.prod(shape) * ITEM_BYTES[dtype]
            if needed != offsets[1] - offsets[0]:
                raise refuse(f"says tensor {name!r} is {dtype} {shape} ({_size_text(needed)}) but gives it "
                             f"{_size_text(offsets[1] - offsets[0])} (corrupt header)")
        if offsets[1] > data_bytes:
            raise refuse(f"places tensor {name!r} at bytes {offsets[0]}-{offsets[1]} of the data but the file holds "
                         f"{_size_text(data_bytes)} of data (truncated, or a corrupt header)")
        tensors[name] = info
    return tensors


def non_finite_names(tensors):
    """Names of the floating-point tensors in {name: tensor} holding a NaN or an infinity (one reduction each)."""
    import torch

    bad = []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        try:
            finite = bool(torch.isfinite(tensor).all())
        except (RuntimeError, NotImplementedError):   # float8 kinds on some devices: check in float16
            finite = bool(torch.isfinite(tensor.to(torch.float16)).all())
        if not finite:
            bad.append(name)
    return bad


def name_list(names, limit=5):
    """'a, b, c and 4 more'."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def warn_non_finite_weights(module, source_name, log):
    """Log a warning naming the tensors of `module` (its floating-point weights, one reduction each) that hold NaN
    or infinity: such a model quantizes, and would only fail while sampling. Returns their names."""
    bad = non_finite_names(dict(module.state_dict()))
    if bad:
        log.warning("Q-Sched: %s has NaN or infinite weights in %d tensors: %s; images from it will fail (the file "
                    "may be damaged, or the model diverged in training)", source_name, len(bad), name_list(bad))
    return bad
