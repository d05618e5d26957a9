"""Crash-safe persistence of a daemon's state as one msgpack file.

File layout: a msgpack map ``{"format": "byzedge-state", "version": 1, "sha256": HEX,
"data": BYTES}`` where ``data`` is the msgpack encoding of the state dict and ``sha256``
its digest. Keeping the payload as bytes means the checksum covers exactly what was
written, not a re-encoding of it.

A write goes to a temporary file in the same directory, is flushed and fsynced, renamed
over the real file with :func:`os.replace` (atomic on POSIX), and the directory is
fsynced so the rename itself survives a power cut. A reader therefore sees the old state
or the new one, never a torn mix. A file that fails to decode or to verify is renamed
aside to ``<name>.corrupt-<timestamp>`` and reported as absent: a daemon starts fresh
(and an operator can inspect the evidence) instead of crash-looping.

Values may be ``None``, bools, ints, floats, str, bytes, lists/tuples (read back as lists),
dicts with str/int/bytes keys, numpy numeric scalars (read back as Python numbers) and
numpy arrays of bool/int/uint/float/complex dtype (read back as writable arrays with the
same dtype and shape). Never pickle: state files must not be a code-execution vector.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "AtomicStore",
    "StateDecodeError",
    "decode_state",
    "encode_state",
]

STATE_FORMAT = "byzedge-state"
STATE_VERSION = 1

# msgpack extension type carrying a numpy array as [dtype.str, shape, raw bytes].
_EXT_NDARRAY = 1
# Plain numeric kinds only: object ('O') and void ('V') dtypes could smuggle arbitrary data.
_ARRAY_KINDS = frozenset("biufc")

_log = logging.getLogger(__name__)


class StateDecodeError(Exception):
    """A stored state cannot be trusted: not ours, another version, or a bad checksum."""


def _default(obj: object) -> object:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS:
            msg = f"cannot store a numpy array of dtype {obj.dtype}"
            raise TypeError(msg)
        # Explicit little-endian byte order so a state file moves between machines.
        array = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        inner = msgpack.packb(
            [array.dtype.str, list(array.shape), array.tobytes()], use_bin_type=True
        )
        return msgpack.ExtType(_EXT_NDARRAY, inner)
    if isinstance(obj, np.generic) and obj.dtype.kind in _ARRAY_KINDS:
        return obj.item()
    msg = f"cannot store a value of type {type(obj).__name__}"
    raise TypeError(msg)


def _ext_hook(code: int, payload: bytes) -> object:
    if code != _EXT_NDARRAY:
        msg = f"unknown msgpack extension type {code}"
        raise StateDecodeError(msg)
    dtype_str, shape, raw = msgpack.unpackb(payload, raw=False)
    dtype = np.dtype(dtype_str)
    if dtype.kind not in _ARRAY_KINDS:
        msg = f"refusing numpy dtype {dtype_str!r}"
        raise StateDecodeError(msg)
    # copy(): frombuffer views the immutable bytes; callers expect a writable array.
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape)).copy()


def _pack(obj: object) -> bytes:
    packed = msgpack.packb(obj, use_bin_type=True, default=_default)
    assert isinstance(packed, bytes)  # noqa: S101 - packb without a stream returns bytes
    return packed


def _unpack(raw: bytes) -> Any:
    # strict_map_key=False: state may key dicts by int (rounds, counters).
    return msgpack.unpackb(raw, raw=False, strict_map_key=False, ext_hook=_ext_hook)


class AtomicStore:
    """One state file, written atomically and verified on read.

    A store assumes it is the only writer of its file (one daemon per state directory,
    as systemd's ``StateDirectory=`` gives).

    Parameters
    ----------
    path
        The state file, e.g. ``$STATE_DIRECTORY/agent.state``. Its directory is created on
        the first :meth:`save`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AtomicStore({str(self.path)!r})"

    def save(self, obj: Mapping[str, Any]) -> None:
        """Replace the stored state with ``obj``, atomically and durably.

        Parameters
        ----------
        obj
            The state; see the module docstring for the value types allowed.

        Raises
        ------
        TypeError
            If ``obj`` holds a value that cannot be stored; the old file is kept.
        OSError
            If the file cannot be written; the old file is kept.
        """
        blob = encode_state(obj)
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(blob)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        _fsync_directory(directory)

    def load(self) -> dict[str, Any] | None:
        """Return the stored state, or ``None`` when there is none to trust.

        A file that cannot be read, decoded or verified is renamed aside to
        ``<name>.corrupt-<timestamp>`` with a warning, and ``None`` is returned. Leftover
        temporary files of an interrupted :meth:`save` are removed.

        Returns
        -------
        dict or None
            The state as saved (tuples come back as lists).
        """
        self._remove_stale_temporaries()
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._quarantine(f"unreadable: {exc}")
            return None
        try:
            return decode_state(blob)
        except StateDecodeError as exc:
            self._quarantine(str(exc))
            return None

    def _quarantine(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        suffix = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{suffix}")
            suffix += 1
        try:
            os.replace(self.path, target)
        except OSError as exc:
            _log.warning(
                "state file %s is corrupt (%s) and could not be set aside: %s; ignoring it",
                self.path,
                reason,
                exc,
            )
            return
        _log.warning(
            "state file %s is corrupt (%s); moved it to %s and starting fresh",
            self.path,
            reason,
            target.name,
        )

    def _remove_stale_temporaries(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            return
        for stale in directory.glob(f".{self.path.name}.*.tmp"):
            _log.debug("removing leftover temporary state file %s", stale)
            with contextlib.suppress(OSError):
                stale.unlink()


def encode_state(obj: Mapping[str, Any]) -> bytes:
    """The stored form of ``obj``: the checksummed wrapper of the module docstring.

    Raises
    ------
    TypeError
        If ``obj`` holds a value that cannot be stored.
    """
    data = _pack(dict(obj))
    wrapper = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
    }
    return _pack(wrapper)


def decode_state(blob: bytes) -> dict[str, Any]:
    """Verify and decode :func:`encode_state`'s bytes.

    Raises
    ------
    StateDecodeError
        When the bytes are not a byzedge state of this version or fail their checksum.
    """
    try:
        wrapper = msgpack.unpackb(blob, raw=False)
    except Exception as exc:
        # msgpack raises a zoo of types (ExtraData, FormatError, ValueError, ...).
        msg = f"not a msgpack document ({type(exc).__name__}: {exc})"
        raise StateDecodeError(msg) from exc
    if not isinstance(wrapper, dict) or wrapper.get("format") != STATE_FORMAT:
        msg = "not a byzedge state file"
        raise StateDecodeError(msg)
    version = wrapper.get("version")
    if version != STATE_VERSION:
        msg = f"unsupported state version {version!r} (this build reads {STATE_VERSION})"
        raise StateDecodeError(msg)
    data, digest = wrapper.get("data"), wrapper.get("sha256")
    if not isinstance(data, bytes) or not isinstance(digest, str):
        msg = "state wrapper lacks its data or checksum"
        raise StateDecodeError(msg)
    if hashlib.sha256(data).hexdigest() != digest:
        msg = "checksum mismatch"
        raise StateDecodeError(msg)
    try:
        state = _unpack(data)
    except StateDecodeError:
        raise
    except Exception as exc:
        msg = f"state payload does not decode ({type(exc).__name__}: {exc})"
        raise StateDecodeError(msg) from exc
    if not isinstance(state, dict):
        msg = f"state payload is a {type(state).__name__}, not a map"
        raise StateDecodeError(msg)
    return state


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable; some filesystems refuse fsync on a directory: best effort.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
