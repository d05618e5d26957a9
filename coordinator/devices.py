"""Enrolled devices: who may send updates, and with which public key."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.signing import VerifyKey
from byzedge.protocol.topics import validate_device_id

__all__ = ["DeviceRegistry"]

_LOGGER = logging.getLogger(__name__)


class DeviceRegistry(Mapping[str, VerifyKey]):
    """Device id -> enrolled Ed25519 public key.

    Parameters
    ----------
    keys:
        The enrolled keys.
    """

    def __init__(self, keys: Mapping[str, VerifyKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def load(cls, folder: Path) -> DeviceRegistry:
        """Read every ``<device_id>.pub`` (PEM) in ``folder``.

        A file whose name is not a valid device id or whose content is not an Ed25519 key
        is skipped with a warning, so one bad enrolment cannot stop the coordinator.
        """
        keys: dict[str, VerifyKey] = {}
        for path in sorted(folder.glob("*.pub")):
            try:
                device_id = validate_device_id(path.stem)
                keys[device_id] = VerifyKey.load(path)
            except (ProtocolError, OSError) as exc:
                _LOGGER.warning("skipping enrolment file %s: %s", path, exc)
        return cls(keys)

    def __getitem__(self, device_id: str) -> VerifyKey:
        return self._keys[device_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
