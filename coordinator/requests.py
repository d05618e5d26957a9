"""Operator requests to a running coordinator, handed over through its state folder.

Only the coordinator writes its state, audit log and reputations (one writer, no races), so
``byzedge coordinator reputation reset DEVICE`` does not edit them: it drops a request file
into ``state_dir/requests/`` (written atomically) and the coordinator applies it before its
next round, records it in the audit log and deletes it. A coordinator that is not running
applies pending requests when it starts.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from byzedge.protocol.errors import TopicError
from byzedge.protocol.topics import validate_device_id

__all__ = ["request_reputation_reset", "take_reputation_resets"]

_LOGGER = logging.getLogger(__name__)
_RESET_SUFFIX = ".reputation-reset"


def _folder(state_dir: Path) -> Path:
    return state_dir / "requests"


def request_reputation_reset(state_dir: Path, device_id: str) -> Path:
    """Ask the coordinator to reset ``device_id``'s reputation; return the request file.

    Raises
    ------
    TopicError
        If ``device_id`` is not a valid device id.
    OSError
        If the request cannot be written.
    """
    validate_device_id(device_id)
    folder = _folder(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{device_id}{_RESET_SUFFIX}"
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        os.close(fd)
        os.replace(temporary, target)  # an empty file: its name is the request
    except OSError:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def take_reputation_resets(state_dir: Path) -> list[str]:
    """Return the device ids whose reset was requested, removing the requests.

    Files that do not name a valid device id are removed and logged.
    """
    folder = _folder(state_dir)
    try:
        names = sorted(path.name for path in folder.iterdir())
    except OSError:
        return []
    devices = []
    for name in names:
        if not name.endswith(_RESET_SUFFIX):
            continue
        device = name[: -len(_RESET_SUFFIX)]
        (folder / name).unlink(missing_ok=True)
        try:
            devices.append(validate_device_id(device))
        except TopicError as exc:
            _LOGGER.warning("ignoring reputation reset request %s: %s", name, exc)
    return devices
