"""The tensors of a TorchScript archive (OpenAI's CLIP .pt files), read without running anything from the file.

torch.jit.load compiles the archive's code/ and runs its objects' __setstate__, and TorchScript can do a lot
there (aten::save writes files anywhere). This reader never looks at code/: it unpickles data.pkl with an
unpickler that can build nothing but tensors, OrderedDicts and plain containers (as torch.load(weights_only=True)
does for ordinary files), turns every TorchScript object (`__torch__.*`) into an inert record of its attributes,
and names the tensors by attribute path, as Module.state_dict() does. Anything else in the pickle is refused.
"""
import collections
import io
import os
import pickle
import zipfile

import torch

from ..folders import SCORERS

MAX_PICKLE_BYTES = 64 << 20   # data.pkl describes the tensors; the tensors themselves are separate records

CONVERT_ONCE = (
    "Convert it once to safetensors in a Python you trust (this runs the file's code, so only for a file from a "
    "source you trust): python -c \"import torch, safetensors.torch as st; m = torch.jit.load('IN.pt', "
    "map_location='cpu'); st.save_file({k: v.detach().clone().contiguous() for k, v in m.state_dict().items()}, "
    f"'OUT.safetensors')\" and put OUT.safetensors in models/{SCORERS}/.")

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class TorchScriptError(ValueError):
    """The archive cannot be read as plain tensors; the message says why."""


class ScriptObject:
    """A TorchScript object from data.pkl: its class name and the state it was pickled with, nothing else."""

    type_name = "?"

    def __init__(self):
        self.state = None


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


def _object_class(type_name):
    return type("ScriptObject", (ScriptObject,), {"type_name": type_name})


def _check_ints(values, what):
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in values):
        raise TorchScriptError(f"a tensor's {what} is not a list of integers")
    return tuple(values)


def _rebuild_tensor(storage, offset, size, stride, *rest):
    """torch._utils._rebuild_tensor_v2 without hooks or metadata: a view of a storage read from the archive."""
    if not isinstance(storage, torch.Tensor) or not isinstance(offset, int):
        raise TorchScriptError("a tensor does not refer to a storage of the archive")
    size, stride = _check_ints(size, "size"), _check_ints(stride, "stride")
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise TorchScriptError(f"a tensor has an impossible layout (size {size}, stride {stride}, offset {offset})")
    if all(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel():
            raise TorchScriptError(f"a tensor of size {size} reaches past the end of its storage")
    return storage.as_strided(size, stride, offset)


def _rebuild_parameter(data, *rest):
    if not isinstance(data, torch.Tensor):
        raise TorchScriptError("a parameter holds no tensor")
    return data


def _ordered_dict(*args):
    if args:
        raise TorchScriptError("an OrderedDict is pickled with arguments")
    return collections.OrderedDict()


def _same(value, *rest):   # torch.jit._pickle.restore_type_tag(value, type_str) and build_*list(list)
    return value


_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch.jit._pickle", "restore_type_tag"): _same,
    ("torch.jit._pickle", "build_intlist"): _same,
    ("torch.jit._pickle", "build_doublelist"): _same,
    ("torch.jit._pickle", "build_boollist"): _same,
    ("torch.jit._pickle", "build_tensorlist"): _same,
    ("torch", "device"): str,
}
_CALLABLE = set(_GLOBALS.values())


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's own unpickler with every way of running or creating arbitrary objects closed: find_class knows a
    fixed list, REDUCE calls only those functions, NEWOBJ creates only ScriptObject records, BUILD sets only
    their state, and the protocol-0/1 object opcodes (INST, OBJ) are gone."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data, read_storage):
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage
        self._classes = {}

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            key = f"{module}.{name}"
            return self._classes.setdefault(key, _object_class(key))
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise TorchScriptError(f"data.pkl refers to {module}.{name}, which a weights-only reader does not "
                                   "load") from None

    def persistent_load(self, pid):
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage" or not isinstance(pid[1], _Storage)
                or not isinstance(pid[2], str) or not isinstance(pid[4], int) or isinstance(pid[4], bool)):
            raise TorchScriptError(f"data.pkl refers to something other than a tensor storage ({pid!r:.80})")
        return self._read_storage(pid[2], pid[1].dtype, pid[4])

    def load_reduce(self):
        args = self.stack.pop()
        function = self.stack[-1]
        if function not in _CALLABLE or not isinstance(args, tuple):
            raise TorchScriptError("data.pkl calls something a weights-only reader does not call")
        self.stack[-1] = function(*args)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, ScriptObject)) or args != ():
            raise TorchScriptError("data.pkl creates an object that is not a TorchScript module record")
        self.append(cls())

    def load_build(self):
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, ScriptObject) or target.state is not None:
            raise TorchScriptError("data.pkl sets the state of something that is not a TorchScript module record")
        target.state = state

    def _refuse(self):
        raise TorchScriptError("data.pkl uses an object-creating opcode a weights-only reader does not run")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.BUILD[0]] = load_build
    for _opcode in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_opcode[0]] = _refuse


def is_torchscript_archive(path):
    """A zip that holds TorchScript code or constants (what torch.jit.save writes)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or name.startswith("code/") or "/code/" in name
                       for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_torchscript_tensors(path):
    """{name: tensor} of the archive's module and submodules, as Module.state_dict() would name them (parameters,
    buffers and other tensor attributes), read without running anything. TorchScriptError if it cannot be."""
    archive_bytes = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [info for info in archive.infolist()
                       if info.filename.endswith("/data.pkl") and info.filename.count("/") == 1]
            if len(pickles) != 1:
                raise TorchScriptError(f"expected one <name>/data.pkl in the archive, found {len(pickles)}")
            prefix = pickles[0].filename[: -len("data.pkl")]
            if pickles[0].file_size > MAX_PICKLE_BYTES:
                raise TorchScriptError(f"its data.pkl is {pickles[0].file_size} bytes, more than a module's "
                                       "description takes")
            _check_byte_order(archive, prefix)
            storages = _StorageReader(archive, prefix, archive_bytes)
            root = _RestrictedUnpickler(archive.read(pickles[0]), storages.read).load()
    except TorchScriptError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, RuntimeError, OSError, MemoryError) as error:
        raise TorchScriptError(f"its data.pkl cannot be read as tensors ({type(error).__name__}: "
                               f"{str(error)[:200]})") from error
    return _state_dict(root)


def _check_byte_order(archive, prefix):
    try:
        order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
    except KeyError:
        return   # archives older than the byteorder record are little-endian
    if order != "little":
        raise TorchScriptError(f"its tensors are stored {order!r}-endian; only little-endian archives are read")


class _StorageReader:
    """Reads `prefix/data/<key>` records into tensors, each once, never more bytes in all than the archive has
    (an uncompressed TorchScript archive holds them as they are; a zip bomb would not)."""

    def __init__(self, archive, prefix, archive_bytes):
        self.archive, self.prefix, self.budget = archive, prefix, archive_bytes
        self.loaded = {}

    def read(self, key, dtype, numel):
        if key in self.loaded:
            tensor = self.loaded[key]
            if tensor.dtype != dtype or tensor.numel() != numel:
                raise TorchScriptError(f"storage {key!r} is used with two different types or sizes")
            return tensor
        if numel < 0 or "/" in key or "\\" in key or key in ("", ".", ".."):
            raise TorchScriptError(f"storage {key!r:.40} of {numel} elements is not a storage of this archive")
        item_size = torch.empty((), dtype=dtype).element_size()
        nbytes = numel * item_size
        try:
            info = self.archive.getinfo(f"{self.prefix}data/{key}")
        except KeyError:
            raise TorchScriptError(f"storage {key!r:.40} is missing from the archive") from None
        if info.file_size < nbytes or nbytes > self.budget:
            raise TorchScriptError(f"storage {key!r:.40} claims {nbytes} bytes but the archive does not hold them")
        self.budget -= nbytes
        raw = torch.empty(nbytes, dtype=torch.uint8)
        view, filled = memoryview(raw.numpy()), 0
        with self.archive.open(info) as handle:
            while filled < nbytes:
                count = handle.readinto(view[filled:])
                if not count:
                    raise TorchScriptError(f"storage {key!r:.40} is truncated")
                filled += count
        tensor = raw.view(dtype) if nbytes else torch.empty(0, dtype=dtype)
        self.loaded[key] = tensor
        return tensor


def _state_dict(root):
    """Tensors by attribute path, depth first in attribute order like Module.state_dict(); each object once."""
    if not isinstance(root, ScriptObject):
        raise TorchScriptError("its data.pkl does not hold a TorchScript module")
    tensors, seen = {}, set()
    stack = [("", root)]
    while stack:
        prefix, item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if item.state is None:
            raise TorchScriptError(f"it holds a TorchScript object ({item.type_name}) without any state")
        if not isinstance(item.state, dict):
            raise TorchScriptError(
                f"it holds a TorchScript object ({item.type_name}) whose state only its own __setstate__ code can "
                f"interpret, and this pack never runs code from a file. {CONVERT_ONCE}")
        children = []
        for name, value in item.state.items():
            if not isinstance(name, str):
                continue
            if isinstance(value, torch.Tensor):
                tensors[prefix + name] = value
            elif isinstance(value, ScriptObject):
                children.append((f"{prefix}{name}.", value))
        stack.extend(reversed(children))
    return tensors
