"""The spool: order across reopening, its cap, and it touches no file but its own."""

import json
import os
import re
import threading

import pytest

from mirasol_edge.errors import UsageError
from mirasol_edge.events.spool import Spool

from .helpers import event


def drain(spool: Spool) -> list[int]:
    """The chunk indices left, oldest first, removing them."""
    out = []
    while (entry := spool.peek()) is not None:
        out.append(entry.event["chunk_index"])
        spool.remove(entry.seq)
    return out


def test_order_survives_reopening(tmp_path):
    folder = tmp_path / "spool"
    with Spool(folder) as spool:
        seqs = [spool.append(event(i)) for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        for _ in range(2):  # two delivered
            spool.remove(spool.peek().seq)
    with Spool(folder) as spool:
        assert len(spool) == 3
        new = spool.append(event(5))
        assert new > seqs[-1]  # the order continues after what is left
        head = spool.peek()
        assert head.event == event(2)
        assert drain(spool) == [2, 3, 4, 5]
    with Spool(folder) as spool:
        assert len(spool) == 0 and spool.peek() is None
        assert spool.append(event(6)) > new


def test_cap_drops_the_newest_and_counts(tmp_path):
    with Spool(tmp_path / "s", max_events=3) as spool:
        results = [spool.append(event(i)) for i in range(5)]
        assert [r is not None for r in results] == [True, True, True, False, False]
        assert spool.dropped == 2 and len(spool) == 3
        assert spool.stats()["dropped"] == 2
        assert drain(spool) == [0, 1, 2]
        assert spool.append(event(9)) is not None  # room again once delivered
    size = len(json.dumps(event(0), separators=(",", ":")))
    with Spool(tmp_path / "b", max_bytes=2 * size + 5) as spool:
        assert [spool.append(event(i)) is not None for i in range(3)] == [True, True, False]
        assert spool.bytes <= 2 * size + 5 and spool.dropped == 1


def test_only_its_own_files_are_touched(tmp_path):
    folder = tmp_path / "spool"
    folder.mkdir()
    foreign = {"notes.txt": b"mine", "ev-1.json": b"{}", "ev-000000000001.json.bak": b"x",
               ".ev-000000000002.json.tmp": b"half", ".ev-000000000003.json.abc.tmp.keep": b"x", "README": b"r"}
    for name, data in foreign.items():
        (folder / name).write_bytes(data)
    (folder / "sub").mkdir()
    (folder / "sub" / "ev-000000000004.json").write_bytes(b"{}")
    with Spool(folder) as spool:
        assert len(spool) == 0  # none of those is an event of its own
        for i in range(4):
            spool.append(event(i))
        assert drain(spool) == [0, 1, 2, 3]
    with Spool(folder) as spool:
        assert len(spool) == 0
    for name, data in foreign.items():
        assert (folder / name).read_bytes() == data, name
    assert (folder / "sub" / "ev-000000000004.json").read_bytes() == b"{}"
    assert not [p.name for p in folder.iterdir() if re.fullmatch(r"ev-\d{12}\.json", p.name)]  # delivered: gone


def test_a_half_written_temp_file_is_removed_not_replayed(tmp_path):
    folder = tmp_path / "spool"
    with Spool(folder) as spool:
        spool.append(event(0))
    half = folder / ".ev-000000000002.json.k3j_9x.tmp"  # what a writer killed mid-write leaves
    half.write_bytes(json.dumps(event(1)).encode()[:20])
    lookalike = folder / ".ev-000000000002.json.k3j_9x.tmp.mine"
    lookalike.write_bytes(b"not the spool's")
    with Spool(folder) as spool:
        assert not half.exists()
        assert lookalike.read_bytes() == b"not the spool's"
        assert drain(spool) == [0]


def test_an_unparsable_event_file_is_kept_aside_and_skipped(tmp_path):
    folder = tmp_path / "spool"
    with Spool(folder) as spool:
        seqs = [spool.append(event(i)) for i in range(3)]
    broken = folder / f"ev-{seqs[1]:012d}.json"
    broken.write_bytes(b'{"stream": "cam')
    with Spool(folder) as spool:
        assert drain(spool) == [0, 2]
        assert (folder / (broken.name + ".bad")).read_bytes() == b'{"stream": "cam'
    with Spool(folder) as spool:
        assert spool.append(event(3)) > seqs[-1]


def test_one_spool_per_folder(tmp_path):
    with Spool(tmp_path / "s"):
        with pytest.raises(UsageError, match="another sink"):
            Spool(tmp_path / "s")
    Spool(tmp_path / "s").close()  # free again once closed


def test_appends_from_many_threads_keep_each_threads_order(tmp_path):
    with Spool(tmp_path / "s", fsync=False) as spool:
        def writer(w):
            for i in range(40):
                spool.append(event(w * 1000 + i))

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        got = drain(spool)
    assert len(got) == 160 and len(set(got)) == 160
    for w in range(4):
        assert [c for c in got if c // 1000 == w] == [w * 1000 + i for i in range(40)]


def test_an_unwritable_folder_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="--spool .*a-file/spool.*not writable"):
        Spool(blocker / "spool")
    if os.geteuid() != 0:  # root writes anywhere; the case above holds for root too
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(UsageError, match="not writable"):
                Spool(locked)
        finally:
            locked.chmod(0o700)
