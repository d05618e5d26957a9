"""Operator requests handed to a running coordinator through its state folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from byzedge.coordinator.requests import request_reputation_reset, take_reputation_resets
from byzedge.protocol.errors import TopicError


def test_a_requested_reset_is_taken_once(tmp_path: Path) -> None:
    request_reputation_reset(tmp_path, "dev-007")

    first = take_reputation_resets(tmp_path)
    second = take_reputation_resets(tmp_path)

    assert first == ["dev-007"]
    assert second == []


def test_an_invalid_device_id_is_refused_at_request_time(tmp_path: Path) -> None:
    with pytest.raises(TopicError):
        request_reputation_reset(tmp_path, "../escape")


def test_a_request_file_with_a_bad_name_is_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "requests"
    folder.mkdir()
    (folder / "coordinator.reputation-reset").write_bytes(b"")

    assert take_reputation_resets(tmp_path) == []
    assert list(folder.iterdir()) == []


def test_no_requests_folder_means_no_requests(tmp_path: Path) -> None:
    assert take_reputation_resets(tmp_path) == []
