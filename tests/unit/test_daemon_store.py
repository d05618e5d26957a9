from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from byzedge.daemon.store import STATE_FORMAT, STATE_VERSION, AtomicStore


def corrupt_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def test_load_returns_none_when_nothing_was_saved(tmp_path: Path) -> None:
    assert AtomicStore(tmp_path / "state").load() is None


def test_a_saved_state_loads_back_equal(tmp_path: Path) -> None:
    store = AtomicStore(tmp_path / "state")
    state = {"round": 3, "counter": 2**40, "ok": True, "none": None, "ratio": 0.25}
    store.save(state)
    assert store.load() == state


def test_bytes_and_nested_values_survive(tmp_path: Path) -> None:
    store = AtomicStore(tmp_path / "state")
    state = {
        "key": b"\x00\xffraw",
        "nested": {"list": [1, "two", b"3", [4.5]], "by_round": {7: "seven"}},
        "text": "naïve",
    }
    store.save(state)
    loaded = store.load()
    assert loaded == state
    assert isinstance(loaded, dict)
    assert isinstance(loaded["key"], bytes)
    assert isinstance(loaded["text"], str)


def test_tuples_come_back_as_lists(tmp_path: Path) -> None:
    store = AtomicStore(tmp_path / "state")
    store.save({"pair": (1, 2)})
    assert store.load() == {"pair": [1, 2]}


def test_numpy_arrays_keep_dtype_shape_and_values(tmp_path: Path) -> None:
    store = AtomicStore(tmp_path / "state")
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.save({"momentum": array, "mask": np.array([True, False]), "scale": np.float32(0.5)})
    loaded = store.load()
    assert loaded is not None
    assert loaded["momentum"].dtype == np.float32
    np.testing.assert_array_equal(loaded["momentum"], array)
    np.testing.assert_array_equal(loaded["mask"], [True, False])
    assert loaded["scale"] == 0.5
    loaded["momentum"][0, 0] = 1.0  # writable, not a view of the file bytes


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        AtomicStore(tmp_path / "state").save({"bad": np.array([object()])})


def test_a_second_save_replaces_the_first(tmp_path: Path) -> None:
    store = AtomicStore(tmp_path / "state")
    store.save({"round": 1})
    store.save({"round": 2})
    assert store.load() == {"round": 2}


def test_the_file_is_a_versioned_msgpack_wrapper(tmp_path: Path) -> None:
    path = tmp_path / "state"
    AtomicStore(path).save({"round": 1})
    wrapper = msgpack.unpackb(path.read_bytes(), raw=False)
    assert wrapper["format"] == STATE_FORMAT
    assert wrapper["version"] == STATE_VERSION
    assert isinstance(wrapper["sha256"], str)
    assert msgpack.unpackb(wrapper["data"], raw=False) == {"round": 1}


def test_save_creates_the_directory(tmp_path: Path) -> None:
    store = AtomicStore(tmp_path / "a" / "b" / "state")
    store.save({"x": 1})
    assert store.load() == {"x": 1}


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    AtomicStore(tmp_path / "state").save({"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_a_failed_save_keeps_the_old_state_and_no_temporary(tmp_path: Path) -> None:
    store = AtomicStore(tmp_path / "state")
    store.save({"round": 1})
    with pytest.raises(TypeError):
        store.save({"round": 2, "bad": object()})
    assert store.load() == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_garbage_is_quarantined_and_load_returns_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"\xc1 this is not msgpack")
    with caplog.at_level(logging.WARNING, logger="byzedge.daemon.store"):
        assert AtomicStore(path).load() is None
    assert not path.exists()
    (aside,) = corrupt_files(path)
    assert aside.read_bytes() == b"\xc1 this is not msgpack"
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_a_torn_write_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "state"
    AtomicStore(path).save({"vector": list(range(1000))})
    path.write_bytes(path.read_bytes()[:-100])
    assert AtomicStore(path).load() is None
    assert len(corrupt_files(path)) == 1


def test_a_checksum_mismatch_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "state"
    AtomicStore(path).save({"round": 1})
    wrapper = msgpack.unpackb(path.read_bytes(), raw=False)
    wrapper["data"] = msgpack.packb({"round": 999}, use_bin_type=True)
    path.write_bytes(msgpack.packb(wrapper, use_bin_type=True))
    assert AtomicStore(path).load() is None
    assert len(corrupt_files(path)) == 1


@pytest.mark.parametrize(
    "wrapper",
    [
        {"format": "something-else", "version": 1},
        {"format": STATE_FORMAT, "version": 99, "sha256": "", "data": b""},
        {"format": STATE_FORMAT, "version": 1},
        [1, 2, 3],
    ],
    ids=["foreign-format", "future-version", "missing-fields", "not-a-map"],
)
def test_an_unexpected_wrapper_is_quarantined(tmp_path: Path, wrapper: Any) -> None:
    path = tmp_path / "state"
    path.write_bytes(msgpack.packb(wrapper, use_bin_type=True))
    assert AtomicStore(path).load() is None
    assert len(corrupt_files(path)) == 1


def test_a_second_corruption_does_not_overwrite_the_first_evidence(tmp_path: Path) -> None:
    path = tmp_path / "state"
    store = AtomicStore(path)
    path.write_bytes(b"\xc1first")
    store.load()
    path.write_bytes(b"\xc1second")
    store.load()
    contents = sorted(p.read_bytes() for p in corrupt_files(path))
    assert contents == [b"\xc1first", b"\xc1second"]


def test_a_leftover_temporary_from_a_crash_is_ignored_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "state"
    store = AtomicStore(path)
    store.save({"round": 4})
    # What a crash between mkstemp() and os.replace() leaves behind.
    (tmp_path / ".state.k3j2h1.tmp").write_bytes(b"\x85partial")
    assert store.load() == {"round": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_saving_after_quarantine_works(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"\xc1")
    store = AtomicStore(path)
    assert store.load() is None
    store.save({"fresh": True})
    assert store.load() == {"fresh": True}


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
# msgpack integers are 64-bit: int64 for negatives, uint64 above.
_keys = st.text(max_size=8) | st.integers(min_value=-(2**63), max_value=2**64 - 1)
_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=20,
)


@given(state=st.dictionaries(st.text(max_size=10), _values, max_size=8))
def test_any_supported_state_roundtrips(
    tmp_path_factory: pytest.TempPathFactory, state: dict[str, Any]
) -> None:
    store = AtomicStore(tmp_path_factory.mktemp("roundtrip") / "state")
    store.save(state)
    assert store.load() == state
