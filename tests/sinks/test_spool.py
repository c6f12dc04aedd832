from __future__ import annotations

import threading
from pathlib import Path

import orjson
import pytest

from sidecar.metrics import Registry
from sidecar.sinks.spool import HEADER, Position, Record, Spool, encode


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


def test_drop_newest_counts_and_leaves_a_gap_record(tmp_path: Path) -> None:
    reg = Registry()
    sp = make(tmp_path, reg, max_bytes=64 * 1024, segment_bytes=16 * 1024, on_full="drop_newest")
    accepted = sum(put(sp, i, size=200) for i in range(1000))
    dropped = 1000 - accepted
    assert 0 < accepted < 1000
    assert sp.bytes() <= 64 * 1024
    assert f'sidecar_events_dropped_total{{reason="spool_full"}} {dropped}' in reg.render()
    recs = read_all(sp)
    sp.acknowledge(recs[-1].seq + 1, None)  # the broker took everything: room again
    assert put(sp, 5000)
    tail = read_all(sp)
    assert [r.kind for r in tail] == ["gap", "decision"]
    gap = orjson.loads(tail[0].body)
    assert gap["dropped"] == dropped and gap["by_kind"] == {"decision": dropped}
    assert tail[0].event_id == gap["event_id"]
    assert "sidecar_spool_gap_records_total 1" in reg.render()
    sp.close()


def test_gap_survives_a_restart(tmp_path: Path) -> None:
    sp = make(tmp_path, max_bytes=64 * 1024, segment_bytes=16 * 1024)
    while put(sp, 0, size=500):
        pass
    put(sp, 1, size=500)
    sp.close()
    sp2 = make(tmp_path, max_bytes=64 * 1024, segment_bytes=16 * 1024)
    kinds = [r.kind for r in read_all(sp2)]
    assert kinds[-1] == "gap"
    sp2.close()


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
