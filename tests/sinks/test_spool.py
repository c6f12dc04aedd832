from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import orjson
import pytest

from sidecar.metrics import Registry
from sidecar.sinks.spool import Spool
from sidecar.sinks.spool_format import (
    FORMAT_VERSION,
    HEADER,
    SEGMENT_HEADER,
    SEGMENT_MAGIC,
    Position,
    Record,
    SpoolError,
    SpoolFormatError,
    encode,
    scan,
    segment_header,
    segment_name,
)
from tests.servers import wait_until


def make(tmp_path: Path, registry: Registry | None = None, **kw: object) -> Spool:
    opts: dict[str, object] = {"max_bytes": 1 << 30, "segment_bytes": 1 << 20, "fsync": "never"}
    opts.update(kw)
    sp = Spool(tmp_path / "spool", registry or Registry(), **opts)  # type: ignore[arg-type]
    sp.open()
    return sp


def put(sp: Spool, i: int, size: int = 40) -> bool:
    body = orjson.dumps({"i": i, "pad": "x" * size})
    return sp.append("decision", f"r{i}/0", f"id-{i}", "2026-11-23T10:00:00.000000Z", body)


def read_all(sp: Spool) -> list[Record]:
    out: list[Record] = []
    while True:
        recs = sp.read(1000, 0)
        if not recs and not sp.unread():
            return out
        out.extend(recs)


def ids(recs: list[Record]) -> list[int]:
    return [orjson.loads(r.body)["i"] for r in recs]


def test_records_come_back_in_order_with_their_fields(tmp_path: Path) -> None:
    sp = make(tmp_path)
    for i in range(100):
        assert put(sp, i)
    recs = read_all(sp)
    assert ids(recs) == list(range(100))
    r = recs[7]
    assert (r.kind, r.key, r.event_id, r.time) == (
        "decision",
        "r7/0",
        "id-7",
        "2026-11-23T10:00:00.000000Z",
    )
    assert [r.seq for r in recs] == list(range(100))
    assert not any(r.replay for r in recs)
    sp.close()


def test_reader_waits_for_new_records_without_sleeping(tmp_path: Path) -> None:
    sp = make(tmp_path)
    got: list[Record] = []
    t = threading.Thread(target=lambda: got.extend(sp.read(10, 5.0)))
    t.start()
    put(sp, 1)
    t.join(5.0)
    assert ids(got) == [1]
    sp.close()


def test_acknowledged_segments_are_deleted_and_bytes_shrink(tmp_path: Path) -> None:
    reg = Registry()
    sp = make(tmp_path, reg, segment_bytes=16 * 1024, max_bytes=1 << 20)
    for i in range(1000):
        put(sp, i)
    segs = sorted((tmp_path / "spool").glob("*.seg"))
    assert len(segs) > 3
    before = sp.bytes()
    assert sp.lag() == 1000
    recs = read_all(sp)
    sp.acknowledge(recs[-1].seq + 1, None)
    assert sp.lag() == 0
    assert sp.bytes() < before
    # Only the segment being written survives.
    assert len(list((tmp_path / "spool").glob("*.seg"))) == 1
    assert "sidecar_spool_lag_events 0" in reg.render()
    sp.close()


def test_restart_replays_only_what_was_not_acknowledged(tmp_path: Path) -> None:
    sp = make(tmp_path, segment_bytes=16 * 1024)
    for i in range(500):
        put(sp, i)
    recs = read_all(sp)
    sp.acknowledge(recs[300].seq, recs[300].pos)  # 0..299 acknowledged
    sp.close()
    sp2 = make(tmp_path, segment_bytes=16 * 1024)
    again = read_all(sp2)
    # Whole records before the checkpoint are never re-sent; replay starts at 300.
    assert ids(again) == list(range(300, 500))
    assert all(r.replay for r in again)
    assert put(sp2, 500)
    new = read_all(sp2)
    assert ids(new) == [500] and not new[0].replay and new[0].seq == 500
    sp2.close()


def test_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    sp = make(tmp_path)
    for i in range(10):
        put(sp, i)
    sp.close()
    seg = next((tmp_path / "spool").glob("*.seg"))
    data = seg.read_bytes()
    last = encode(10, "decision", "r10/0", "id-10", "t", b'{"i":10}')
    seg.write_bytes(data + last[: len(last) // 2])  # a crash in the middle of a write
    reg = Registry()
    sp2 = make(tmp_path, reg)
    assert "sidecar_spool_corrupt_total 1" in reg.render()
    assert seg.stat().st_size == len(data)
    assert put(sp2, 10)
    assert ids(read_all(sp2)) == list(range(11))
    sp2.close()


def test_corrupt_record_in_the_middle_is_skipped(tmp_path: Path) -> None:
    sp = make(tmp_path)
    offsets = []
    for i in range(20):
        offsets.append((tmp_path / "spool" / "00000000000000000000.seg").stat().st_size)
        put(sp, i)
    sp.close()
    seg = tmp_path / "spool" / "00000000000000000000.seg"
    raw = bytearray(seg.read_bytes())
    raw[offsets[5] + HEADER.size + 10] ^= 0xFF  # flip a byte inside record 5's payload
    raw[offsets[12] : offsets[12] + 4] = b"\x00\x00\x00\x00"  # wipe record 12's header
    seg.write_bytes(bytes(raw))
    reg = Registry()
    sp2 = make(tmp_path, reg)
    got = ids(read_all(sp2))
    assert got == [i for i in range(20) if i not in (5, 12)]
    text = reg.render()
    assert "sidecar_spool_corrupt_total 2.0\n" in text
    sp2.close()


def test_garbage_file_and_bad_checkpoint_do_not_stop_the_spool(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    d.mkdir()
    (d / "00000000000000000000.seg").write_bytes(b"\x00garbage" * 100)
    (d / "acked").write_bytes(b"{not json")
    reg = Registry()
    sp = make(tmp_path, reg)
    assert read_all(sp) == []
    assert put(sp, 1)
    assert ids(read_all(sp)) == [1]
    assert "sidecar_spool_corrupt_total 2" in reg.render()
    sp.close()


def test_drop_newest_counts_and_names_each_dropped_event(tmp_path: Path) -> None:
    reg = Registry()
    told: list[tuple[str, str, str]] = []
    sp = make(
        tmp_path,
        reg,
        max_bytes=64 * 1024,
        segment_bytes=16 * 1024,
        on_full="drop_newest",
        on_drop=lambda *a: told.append(a),
    )
    kept = [i for i in range(1000) if put(sp, i, size=200)]
    dropped = 1000 - len(kept)
    assert 0 < len(kept) < 1000
    assert sp.bytes() <= 64 * 1024
    assert f'sidecar_events_dropped_total{{reason="spool_full"}} {dropped}' in reg.render()
    assert told == [("spool_full", "decision", f"r{i}/0") for i in range(len(kept), 1000)]
    assert not sp.has_room(1024)
    sp.close()


def test_a_forced_record_is_written_into_a_full_spool(tmp_path: Path) -> None:
    sp = make(tmp_path, max_bytes=64 * 1024, segment_bytes=16 * 1024)
    while put(sp, 0, size=500):
        pass
    assert sp.append("gap", "g", "gid", "2026-11-23T10:00:00.000000Z", b"{}", force=True)
    assert [r.kind for r in read_all(sp)][-1] == "gap"
    sp.close()


def _break_disk(sp: Spool) -> int:
    """Swap the active segment's descriptor for a read-only one: every write fails (EBADF)."""
    good = sp._fd
    sp._fd = os.open(sp.directory / segment_name(sp._active), os.O_RDONLY)
    return good


def _mend_disk(sp: Spool, good: int) -> None:
    with sp._lock:
        bad, sp._fd = sp._fd, good
    os.close(bad)


def test_a_disk_error_under_drop_newest_drops_counts_and_tells(tmp_path: Path) -> None:
    reg = Registry()
    told: list[tuple[str, str, str]] = []
    sp = make(tmp_path, reg, on_drop=lambda *a: told.append(a))
    assert put(sp, 0)
    good = _break_disk(sp)
    assert not put(sp, 1)
    assert told == [("spool_error", "decision", "r1/0")]
    assert sp.disk_error is not None and not sp.has_room(1)
    assert 'sidecar_spool_disk_errors_total{op="append"} 1' in reg.render()
    _mend_disk(sp, good)
    assert put(sp, 2)
    assert sp.disk_error is None
    assert ids(read_all(sp)) == [0, 2]
    sp.close()


def test_a_disk_error_under_block_waits_until_the_disk_is_back(tmp_path: Path) -> None:
    reg = Registry()
    told: list[tuple[str, str, str]] = []
    sp = make(tmp_path, reg, on_full="block", on_drop=lambda *a: told.append(a))
    good = _break_disk(sp)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(put(sp, 1)))
    t.start()
    wait_until(
        lambda: 'sidecar_spool_disk_errors_total{op="append"} 0' not in reg.render(),
        10,
        "the append to fail",
    )
    assert t.is_alive() and not result  # still waiting: the policy is to block, not to drop
    _mend_disk(sp, good)
    t.join(10)
    assert result == [True] and told == []
    assert ids(read_all(sp)) == [1]
    sp.close()


def test_an_fsync_error_is_counted_reported_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry()
    sp = make(tmp_path, reg, fsync="interval", fsync_interval_s=3600)
    assert put(sp, 0)

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    real = os.fsync
    monkeypatch.setattr(os, "fsync", eio)
    sp._flush_once()
    assert sp.disk_error is not None and sp.disk_error.startswith("fsync")
    assert 'sidecar_spool_disk_errors_total{op="fsync"} 1' in reg.render()
    assert sp.fsync_alive()
    monkeypatch.setattr(os, "fsync", real)
    sp._flush_once()  # the failed round left the spool dirty: it is synced again
    assert sp.disk_error is None
    sp.close()


def test_block_policy_waits_for_room_then_continues(tmp_path: Path) -> None:
    reg = Registry()
    sp = make(tmp_path, reg, max_bytes=64 * 1024, segment_bytes=16 * 1024, on_full="block")
    done = threading.Event()
    results: list[bool] = []

    def publisher() -> None:
        results.extend(put(sp, i, size=200) for i in range(1000))
        done.set()

    t = threading.Thread(target=publisher)
    t.start()
    while sp.waiting == 0:  # the publisher fills the spool, then waits
        t.join(0.005)
        assert t.is_alive()
    assert "sidecar_spool_blocked_publishers 1" in reg.render()
    # Play the broker: acknowledge whatever is there until the publisher finishes.
    seen: list[Record] = []
    while not done.is_set():
        recs = sp.read(1000, 0.05)
        seen.extend(recs)
        if recs:
            sp.acknowledge(recs[-1].seq + 1, None)
    t.join()
    seen.extend(read_all(sp))
    assert all(results) and len(results) == 1000
    assert ids(seen) == list(range(1000))
    assert "sidecar_spool_blocked_seconds_total 0.0\n" not in reg.render()
    assert 'sidecar_events_dropped_total{reason="spool_full"} 0' in reg.render()
    sp.close()


def test_block_policy_releases_the_publisher_at_close(tmp_path: Path) -> None:
    reg = Registry()
    sp = make(tmp_path, reg, max_bytes=64 * 1024, segment_bytes=16 * 1024, on_full="block")
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.extend(put(sp, i, 500) for i in range(1000)))
    t.start()
    t.join(0.5)
    assert t.is_alive()  # blocked: no one acknowledges
    sp.close()
    t.join(5)
    assert not t.is_alive() and results[-1] is False
    assert 'sidecar_events_dropped_total{reason="closed"}' in reg.render()


def test_rewind_reads_again_from_a_position(tmp_path: Path) -> None:
    sp = make(tmp_path)
    for i in range(10):
        put(sp, i)
    recs = read_all(sp)
    sp.rewind(recs[4].pos)
    assert ids(read_all(sp)) == list(range(4, 10))
    assert recs[4].pos == Position(0, recs[4].pos.offset)
    sp.close()


@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_every_fsync_policy_keeps_records(tmp_path: Path, fsync: str) -> None:
    sp = make(tmp_path, fsync=fsync, fsync_interval_s=0.01)
    for i in range(50):
        put(sp, i)
    sp.close()
    sp2 = make(tmp_path)
    assert ids(read_all(sp2)) == list(range(50))
    sp2.close()


def test_oversized_event_is_refused(tmp_path: Path) -> None:
    sp = make(tmp_path)
    with pytest.raises(ValueError, match="larger than"):
        sp.append("decision", "k", "e", "t", b"x" * (17 * 1024 * 1024))
    sp.close()


def test_a_second_process_cannot_share_the_spool(tmp_path: Path) -> None:
    import subprocess
    import sys

    sp = make(tmp_path)
    code = (
        "import sys; from sidecar.sinks.spool import Spool, SpoolBusy; from sidecar.metrics import Registry\n"
        f"s = Spool({str(tmp_path / 'spool')!r}, Registry(), max_bytes=1 << 20, segment_bytes=1 << 16)\n"
        "try:\n    s.open()\nexcept SpoolBusy as e:\n    print(e); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "in use by another running sidecar" in proc.stdout
    sp.close()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- format version -----------------------------------------------------------


def seg_path(tmp_path: Path, first: int) -> Path:
    return tmp_path / "spool" / f"{first:020d}.seg"


def legacy_segment(tmp_path: Path, first: int, items: range) -> bytes:
    """A segment as the release before format versions wrote it: records from byte 0."""
    data = b"".join(
        encode(i, "decision", f"r{i}/0", f"id-{i}", "t", orjson.dumps({"i": i})) for i in items
    )
    seg_path(tmp_path, first).parent.mkdir(exist_ok=True)
    seg_path(tmp_path, first).write_bytes(data)
    return data


def test_every_segment_and_the_checkpoint_carry_the_format_version(tmp_path: Path) -> None:
    sp = make(tmp_path, segment_bytes=16 * 1024)
    for i in range(500):
        put(sp, i)
    recs = read_all(sp)
    sp.acknowledge(recs[10].seq, recs[10].pos)
    sp.close()
    segs = sorted((tmp_path / "spool").glob("*.seg"))
    assert len(segs) > 2
    for seg in segs:
        head = seg.read_bytes()[: SEGMENT_HEADER.size]
        assert head == segment_header(int(seg.stem))
        magic, version, _, first, _ = SEGMENT_HEADER.unpack(head)
        assert (magic, version, first) == (SEGMENT_MAGIC, FORMAT_VERSION, int(seg.stem))
    ckpt = orjson.loads((tmp_path / "spool" / "acked").read_bytes())
    assert ckpt == {"version": 1, "seq": 10, "segment": 0, "offset": recs[10].pos.offset}
    # The header is not a record: the first record starts right after it.
    assert recs[0].pos == Position(0, SEGMENT_HEADER.size)
    assert ids(scan(tmp_path / "spool")) == list(range(500))  # all on disk, acknowledged or not


def test_a_segment_of_a_newer_version_is_refused_at_start(tmp_path: Path) -> None:
    sp = make(tmp_path)
    for i in range(5):
        put(sp, i)
    sp.close()
    seg = seg_path(tmp_path, 0)
    raw = bytearray(seg.read_bytes())
    raw[8:10] = (2).to_bytes(2, "little")  # what version 2 would write there
    seg.write_bytes(bytes(raw))
    before = {p.name: p.read_bytes() for p in (tmp_path / "spool").iterdir()}
    with pytest.raises(SpoolFormatError) as err:
        make(tmp_path)
    msg = str(err.value)
    assert str(seg) in msg and "format version 2" in msg and "reads version 1" in msg
    assert isinstance(err.value, SpoolError)  # reported like the lock: SpoolBusy is one too
    # Refused before touching anything: nothing truncated, deleted or rewritten.
    assert {p.name: p.read_bytes() for p in (tmp_path / "spool").iterdir()} == before
    with pytest.raises(SpoolFormatError, match="format version 2"):
        scan(tmp_path / "spool")
    # The refusal released the directory's lock: with the file gone the spool opens.
    seg.unlink()
    sp2 = make(tmp_path)
    assert put(sp2, 9)
    sp2.close()


def test_a_checkpoint_of_a_newer_version_is_refused_at_start(tmp_path: Path) -> None:
    sp = make(tmp_path)
    put(sp, 0)
    sp.close()
    ckpt = tmp_path / "spool" / "acked"
    ckpt.write_bytes(orjson.dumps({"version": 7, "seq": 0, "segment": 0, "offset": 24}))
    with pytest.raises(SpoolFormatError) as err:
        make(tmp_path)
    assert str(ckpt) in str(err.value) and "format version 7" in str(err.value)
    ckpt.write_bytes(orjson.dumps({"version": "1", "seq": 0, "segment": 0, "offset": 24}))
    reg = Registry()
    sp2 = make(tmp_path, reg)  # a mangled version field is a damaged checkpoint: replay all
    assert ids(read_all(sp2)) == [0]
    assert "sidecar_spool_corrupt_total 1.0\n" in reg.render()
    sp2.close()


def test_a_spool_of_the_previous_release_is_replayed_and_then_left_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    offset_of_3 = len(legacy_segment(tmp_path, 0, range(0, 3)))  # where record 3 starts
    old0 = legacy_segment(tmp_path, 0, range(0, 10))
    old10 = legacy_segment(tmp_path, 10, range(10, 15))
    # The old checkpoint has no version: records 0..2 were acknowledged.
    (tmp_path / "spool" / "acked").write_bytes(
        orjson.dumps({"seq": 3, "segment": 0, "offset": offset_of_3})
    )
    reg = Registry()
    caplog.set_level("INFO", "sidecar.sinks.spool")
    sp = make(tmp_path, reg)
    assert "2 segments without a format header" in caplog.text
    assert put(sp, 15)
    recs = read_all(sp)
    assert ids(recs) == list(range(3, 16))
    assert [r.replay for r in recs] == [True] * 12 + [False]
    assert recs[-1].seq == 15 and recs[-1].pos == Position(15, SEGMENT_HEADER.size)
    # Never appended to: the new event went to a versioned segment of its own.
    assert seg_path(tmp_path, 0).read_bytes() == old0
    assert seg_path(tmp_path, 10).read_bytes() == old10
    assert seg_path(tmp_path, 15).read_bytes().startswith(segment_header(15))
    assert "sidecar_spool_corrupt_total 0.0\n" in reg.render()
    sp.acknowledge(recs[5].seq, recs[5].pos)  # up to 7 acknowledged, stop mid-way
    sp.close()
    sp2 = make(tmp_path)  # old and new segments side by side survive a restart
    assert ids(read_all(sp2)) == list(range(8, 16))
    sp2.acknowledge(16, None)
    assert [p.name for p in (tmp_path / "spool").glob("*.seg")] == [seg_path(tmp_path, 15).name]
    sp2.close()


def test_an_empty_segment_of_the_previous_release_is_replaced(tmp_path: Path) -> None:
    # The previous release created a segment empty and wrote records to it later.
    seg_path(tmp_path, 40).parent.mkdir()
    seg_path(tmp_path, 40).write_bytes(b"")
    reg = Registry()
    sp = make(tmp_path, reg)
    assert put(sp, 40)
    recs = read_all(sp)
    assert ids(recs) == [40] and recs[0].seq == 40
    assert seg_path(tmp_path, 40).read_bytes().startswith(segment_header(40))
    assert "sidecar_spool_corrupt_total 0.0\n" in reg.render()
    sp.close()


@pytest.mark.parametrize("keep", [0, 6, 12, SEGMENT_HEADER.size - 1])
def test_a_truncated_header_is_never_read_as_records(tmp_path: Path, keep: int) -> None:
    seg_path(tmp_path, 0).parent.mkdir()
    seg_path(tmp_path, 0).write_bytes(segment_header(0)[:keep])
    reg = Registry()
    sp = make(tmp_path, reg)
    assert read_all(sp) == []
    counted = (
        "sidecar_spool_corrupt_total 0.0\n" if keep == 0 else "sidecar_spool_corrupt_total 1.0\n"
    )
    assert counted in reg.render()  # an empty file is a crash before the header, not damage
    assert put(sp, 0)
    assert ids(read_all(sp)) == [0]
    assert seg_path(tmp_path, 0).read_bytes().startswith(segment_header(0))
    sp.close()


@pytest.mark.parametrize(
    "damage",
    ["cut", "magic", "crc", "seq"],
)
def test_records_behind_a_damaged_header_are_replayed_and_the_damage_counted(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    sp = make(tmp_path, segment_bytes=4096)
    for i in range(100):
        put(sp, i)
    sp.close()
    seg = seg_path(tmp_path, 0)
    raw = seg.read_bytes()
    head, body = raw[: SEGMENT_HEADER.size], raw[SEGMENT_HEADER.size :]
    if damage == "cut":
        head = head[:12]
    elif damage == "magic":
        head = b"\x00" * 8 + head[8:]
    elif damage == "crc":
        head = head[:-1] + bytes([head[-1] ^ 1])
    else:  # a valid header of another segment: not this file's
        head = segment_header(12345)
    seg.write_bytes(head + body)
    reg = Registry()
    sp2 = make(tmp_path, reg, segment_bytes=4096)
    assert "no valid header" in caplog.text and seg.name in caplog.text
    assert ids(read_all(sp2)) == list(range(100))  # every record, each once
    assert "sidecar_spool_corrupt_total 1.0\n" in reg.render()
    assert f"sidecar_spool_corrupt_bytes_total {float(len(head))}\n" in reg.render()
    sp2.close()


def test_a_headerless_segment_whose_first_record_is_not_its_own_is_damage(
    tmp_path: Path,
) -> None:
    # Recognised as the previous release's only when its first record's seq is the file's name.
    legacy_segment(tmp_path, 5, range(0, 3))
    reg = Registry()
    sp = make(tmp_path, reg)
    assert ids(read_all(sp)) == [0, 1, 2]  # still CRC-checked records: replayed, not lost
    assert "sidecar_spool_corrupt_total 1.0\n" in reg.render()
    assert put(sp, 3)
    assert seg_path(tmp_path, 5).read_bytes()[:2] == b"PS"  # not appended to either
    sp.close()
