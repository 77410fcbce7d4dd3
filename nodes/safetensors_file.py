"""Safetensors files read without trusting them, and written whole or not at all.

Style files and feed-forward weights come from other people and other versions, and arrive cut
off by an interrupted copy, or as something else under a ``.safetensors`` name. Before any tensor
is read, :func:`read_header` parses the header with bounded reads and checks it against the
file: the length word against the file size, the JSON, every dtype name, every shape against
its byte range, and the byte ranges against each other and the file's end. Anything else than
a well-formed file gets a :class:`SafetensorsFileError` saying what is wrong, in words (never
a pickle: nothing here unpickles, so nothing in a file can run code).

:func:`write_new` writes a temporary file in the target's folder and then gives it the target's
name in one step, never over an existing file: a Cancel or a crash mid-write leaves no half
file under the name (at most a hidden ``.tmp`` one after a hard crash, which no list shows).

Importable without ComfyUI (standard library, torch and safetensors only, no relative imports):
scripts/convert_feedforward_weights.py loads it by its path.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass

from safetensors.torch import save_file

__all__ = ["SafetensorsFileError", "TensorEntry", "Header", "read_header", "foreign_kind", "check_archive",
           "check_before_loading",
           "write_new", "SAFETENSORS_EXTENSIONS",
           "FLOAT_DTYPES", "DTYPE_BYTES"]

# The safetensors library refuses longer headers; a longer length word is not a safetensors file.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# safetensors dtype names -> bytes per element (the ones torch has a dtype for).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_LISTED = 4   # how many offending names a message lists


class SafetensorsFileError(ValueError):
    """Not a safetensors file, or a damaged one. The message says what is wrong; the caller
    names the file."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str                  # the safetensors name, e.g. "F32"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    file_bytes: int


def foreign_kind(head: bytes) -> str | None:
    """What the first bytes of a file say it is, when it is a known non-safetensors format."""
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch checkpoint (a zip archive from torch.save)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (e.g. from torch.save)"
    if head.startswith(b"GGUF"):
        return "a GGUF file"
    return None


def _refuse_foreign(head: bytes) -> None:
    kind = foreign_kind(head)
    if kind is not None:
        raise SafetensorsFileError(f"this is {kind}, not a safetensors file (renamed?). Pickles can run code "
                                   "when loaded, so it is not read")


def read_header(path: str | os.PathLike) -> Header:
    """The checked header of the safetensors file at ``path``; no tensor is read.

    Raises :class:`SafetensorsFileError` (what is wrong), or ``OSError`` when the file cannot
    be opened (``FileNotFoundError``: it is gone).
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(8)
        if len(head) < 8:
            raise SafetensorsFileError(f"the file has {size} bytes, too few for a safetensors file "
                                       "(empty, or cut off by an interrupted copy or download)")
        (length,) = struct.unpack("<Q", head)
        fits = 2 <= length <= MAX_HEADER_BYTES
        if not (fits and length <= size - 8):
            _refuse_foreign(head)
            if fits:
                raise SafetensorsFileError(f"the file is cut off: its header alone should take {length} bytes, "
                                           f"but the whole file has {size} (an interrupted copy or download?)")
            raise SafetensorsFileError("not a safetensors file: its first 8 bytes do not give the length of a "
                                       "safetensors header")
        raw = file.read(length)
    if not raw.startswith(b"{"):
        _refuse_foreign(head)
        raise SafetensorsFileError("not a safetensors file: no safetensors header follows its first 8 bytes")
    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_without_repeats)
    except _RepeatedName as e:
        raise SafetensorsFileError(f"damaged header: it names {e} twice") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SafetensorsFileError("not a safetensors file, or a damaged one: its header is not JSON") from None
    if not isinstance(parsed, dict):
        raise SafetensorsFileError("not a safetensors file, or a damaged one: its header is not a JSON object")
    metadata = parsed.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise SafetensorsFileError("damaged header: its metadata is not a table of texts")
    tensors, ranges = {}, []
    for name, entry in parsed.items():
        tensors[name], begin, end = _entry(name, entry)
        ranges.append((begin, end, name))
    _check_ranges(ranges, size - 8 - length)
    return Header(tensors, dict(metadata), size)


class _RepeatedName(Exception):
    pass


def _without_repeats(pairs: list) -> dict:
    """A JSON object, refusing a name given twice (json.loads would keep the last one silently;
    safetensors refuses the file)."""
    table = {}
    for key, value in pairs:
        if key in table:
            raise _RepeatedName(repr(key))
        table[key] = value
    return table


def _entry(name: str, entry) -> tuple[TensorEntry, int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsFileError(f"damaged header: the entry of tensor {name!r} is not dtype, shape and "
                                   "data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise SafetensorsFileError(f"tensor {name!r} has dtype {dtype!r}, which is no dtype this pack reads "
                                   f"({', '.join(DTYPE_BYTES)})")

    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not isinstance(shape, list) or not all(whole(n) for n in shape):
        raise SafetensorsFileError(f"damaged header: tensor {name!r} has shape {shape!r}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(whole(n) for n in offsets) \
            or offsets[0] > offsets[1]:
        raise SafetensorsFileError(f"damaged header: tensor {name!r} has data_offsets {offsets!r}, not "
                                   "[begin, end]")
    needed = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != needed:
        raise SafetensorsFileError(f"damaged header: tensor {name!r} ({dtype} {shape}) needs {needed} bytes, "
                                   f"but its data_offsets give {offsets[1] - offsets[0]}")
    return TensorEntry(dtype, tuple(shape)), offsets[0], offsets[1]


def _check_ranges(ranges: list, data_bytes: int) -> None:
    """The tensors' byte ranges must tile the data after the header exactly, as safetensors
    writes them (and as its reader insists)."""
    end = 0
    for begin, stop, name in sorted(ranges):
        if begin != end:
            raise SafetensorsFileError(f"damaged header: tensor {name!r} starts at byte {begin} of the data, "
                                       f"where {end} was expected (tensors overlap or leave gaps)")
        end = stop
    if end > data_bytes:
        raise SafetensorsFileError(f"the file is cut off: its tensors need {end} bytes after the header, but "
                                   f"only {data_bytes} follow (an interrupted copy or download?)")
    if end < data_bytes:
        raise SafetensorsFileError(f"the file has {data_bytes - end} bytes after its last tensor: not a file "
                                   "safetensors wrote (two files joined?)")


def check_archive(path: str | os.PathLike) -> None:
    """A torch.save zip archive must end with its directory: else it is cut off."""
    with open(path, "rb") as file:
        head = file.read(8)
    if head.startswith(b"PK\x03\x04") and not zipfile.is_zipfile(path):
        raise SafetensorsFileError("the file is cut off or damaged: its zip archive has no directory at the "
                                   "end (an interrupted copy or download?)")


SAFETENSORS_EXTENSIONS = (".safetensors", ".sft")


def check_before_loading(path: str | os.PathLike) -> None:
    """What can be told of a weight file from its first bytes, before a loader reads it: a
    safetensors file's header (:func:`read_header`), a torch.save archive's end
    (:func:`check_archive`)."""
    if os.fspath(path).lower().endswith(SAFETENSORS_EXTENSIONS):
        read_header(path)
    else:
        check_archive(path)


def write_new(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> None:
    """Write ``tensors`` and ``metadata`` as a new safetensors file at ``path``.

    The data goes to a hidden temporary file in the same folder (the final step is then a
    rename on one file system), is flushed to the disk, and only then gets the name ``path``.
    Raises ``FileExistsError`` when ``path`` exists: a saved file is never overwritten.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists already; it is never overwritten")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
    os.close(descriptor)
    try:
        save_file(tensors, temporary, metadata=metadata)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        _give_name(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _give_name(temporary: str, path: str) -> None:
    try:
        os.link(temporary, path)   # fails if path exists: two saves can never overwrite each other
    except FileExistsError:
        raise FileExistsError(f"{path} exists already; it is never overwritten") from None
    except OSError:
        # A file system without hard links (some network shares, FAT): a rename, after a check.
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists already; it is never overwritten") from None
        os.replace(temporary, path)
