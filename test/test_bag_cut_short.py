"""Bags cut short (the recorder was killed): every complete message is read, losses are said.

The bags are real: ``training.make_bag`` writes them from procedural frames, then an mcap
loses its tail (footer, summary and part of the data), or a subprocess leaves a sqlite3
bag with committed and uncommitted transactions and is SIGKILLed before the last commit.
``training.replay``, the rosbag dataset reader and ``make_bag --overwrite`` must read
exactly the complete messages and say how many were lost, or fail naming the file.
"""
import shutil
import subprocess
import sys

import pytest
from rosbags.rosbag2 import Reader

from training import bag_format as bf
from training import make_bag, replay
from training.bag_check import BagError, check_bag, open_bag
from training.data import DataError, open_source
from training.data.make_procedural import generate

N_FRAMES = 12
TOPICS = 4  # image, camera_info, ground-truth depth and labels per frame


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    """One intact bag per storage plugin, written by the make_bag CLI (about 1.2 MB each)."""
    root = tmp_path_factory.mktemp('cut')
    generate(root / 'proc', sim_frames=0, real_frames=N_FRAMES, height=64, width=192,
             frames_per_sequence=N_FRAMES, workers=1)
    out = {}
    for storage in ('mcap', 'sqlite3'):
        out[storage] = root / f'intact_{storage}'
        assert make_bag.main(['--data', 'test', '--split', 'all', '--storage', storage,
                              '--out', str(out[storage]), '--quiet', '--set',
                              f'data.eval.root={root / "proc"}']) == 0
    return out


def messages(bag):
    """Every message of a bag, in order, as (topic, log time, bytes)."""
    with Reader(bag) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


def cut_mcap(intact, dst, keep_bytes):
    """Copy a bag and keep only the first ``keep_bytes`` of its mcap (a killed recorder)."""
    shutil.copytree(intact, dst)
    mcap = dst / f'{intact.name}.mcap'
    mcap.rename(dst / f'{dst.name}.mcap')
    meta = (dst / 'metadata.yaml').read_text().replace(f'{intact.name}.mcap',
                                                       f'{dst.name}.mcap')
    (dst / 'metadata.yaml').write_text(meta)
    data = (dst / f'{dst.name}.mcap').read_bytes()
    (dst / f'{dst.name}.mcap').write_bytes(data[:keep_bytes])
    return dst, data


def complete_before(data, msgs, cut):
    """Count the messages whose whole record lies in ``data[:cut]`` (payloads are unique)."""
    ends = []
    for _, _, raw in msgs:
        at = data.find(raw)
        assert at > 0 and data.find(raw, at + 1) < 0
        ends.append(at + len(raw))
    return sum(end <= cut for end in ends)


KILLED_WRITER = r'''
import os, signal, sqlite3, sys
db, committed, in_wal, wal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
con = sqlite3.connect(db, isolation_level=None)
stamps = [t for (t,) in con.execute('SELECT DISTINCT timestamp FROM messages ORDER BY 1')]
later = con.execute('SELECT topic_id, timestamp, data FROM messages WHERE timestamp >= ? '
                    'ORDER BY id', (stamps[committed],)).fetchall()
con.execute('DELETE FROM messages WHERE timestamp >= ?', (stamps[committed],))
con.execute('VACUUM')
if wal == 'wal':  # committed transactions that stay in the WAL, never checkpointed
    con.execute('PRAGMA journal_mode=WAL')
    con.execute('PRAGMA wal_autocheckpoint=0')
    con.execute('BEGIN')
    con.executemany('INSERT INTO messages (topic_id, timestamp, data) VALUES (?, ?, ?)',
                    [r for r in later if r[1] < stamps[committed + in_wal]])
    con.execute('COMMIT')
con.execute('PRAGMA cache_size=2')  # spill uncommitted pages into the file, like big writes
con.execute('BEGIN')
con.executemany('INSERT INTO messages (topic_id, timestamp, data) VALUES (?, ?, ?)',
                [r for r in later if r[1] >= stamps[committed + (in_wal if wal == 'wal' else 0)]])
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGKILL)
'''


def uncommitted_sqlite(intact, dst, committed, in_wal=0, mode='journal'):
    """Copy a sqlite3 bag; leave ``committed`` frames committed and the rest uncommitted."""
    shutil.copytree(intact, dst)
    db = dst / f'{intact.name}.db3'
    proc = subprocess.run([sys.executable, '-c', KILLED_WRITER, str(db), str(committed),
                           str(in_wal), mode], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    sidecar = db.with_name(db.name + ('-wal' if mode == 'wal' else '-journal'))
    assert sidecar.is_file()
    return dst


def test_mcap_without_footer_yields_exactly_its_complete_messages(bags, tmp_path):
    intact = bags['mcap']
    msgs = messages(intact)
    assert len(msgs) == N_FRAMES * TOPICS
    size = (intact / f'{intact.name}.mcap').stat().st_size
    # mid-chunk (messages of a chunk cut in two), exactly after a message record, and a
    # cut inside the first message.
    data = (intact / f'{intact.name}.mcap').read_bytes()
    after_7th = data.find(msgs[6][2]) + len(msgs[6][2])
    for i, keep in enumerate((int(size * 0.6), after_7th, data.find(msgs[0][2]) + 10)):
        bag, data = cut_mcap(intact, tmp_path / f'cut{i}', keep)
        want = complete_before(data, msgs, keep)
        reader, check = open_bag(bag)
        try:
            got = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
        finally:
            reader.close()
        assert got == msgs[:want], (keep, len(got), want)
        assert check.cut_short and sum(check.found.values()) == want
        assert check.lost == len(msgs) - want
        assert f'{len(msgs) - want} of {len(msgs)} messages' in check.summary()
        assert str(bag / f'cut{i}.mcap') in check.summary()
    assert want == 0 and after_7th < size * 0.6


@pytest.mark.parametrize('mode', ['journal', 'wal'])
def test_sqlite_bag_keeps_committed_messages_only(bags, tmp_path, mode):
    intact = bags['sqlite3']
    msgs = messages(intact)
    bag = uncommitted_sqlite(intact, tmp_path / 'bag', committed=5, in_wal=3, mode=mode)
    kept = 5 + (3 if mode == 'wal' else 0)  # WAL: the committed transaction counts
    reader, check = open_bag(bag)
    try:
        got = [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]
    finally:
        reader.close()
    assert got == msgs[:kept * TOPICS]
    assert check.cut_short and check.lost == (N_FRAMES - kept) * TOPICS
    assert 'uncommitted transaction' in check.summary() and str(bag) in check.summary()
    # The bag itself is left as the recorder left it.
    assert (bag / f'{intact.name}.db3-{"wal" if mode == "wal" else "journal"}').is_file()


def test_intact_bags_are_read_in_place(bags):
    for bag in bags.values():
        check = check_bag(bag)
        assert not check.cut_short and check.read_path == bag and check.lost == 0


def test_unreadable_bags_fail_naming_the_file(bags, tmp_path):
    bag, _ = cut_mcap(bags['mcap'], tmp_path / 'stub', 5)  # not even the mcap magic
    with pytest.raises(BagError, match=str(bag / 'stub.mcap')):
        check_bag(bag)
    no_meta = tmp_path / 'no_meta'
    shutil.copytree(bags['sqlite3'], no_meta)
    (no_meta / 'metadata.yaml').unlink()
    with pytest.raises(BagError, match=str(no_meta / 'metadata.yaml')):
        check_bag(no_meta)
    with pytest.raises(DataError, match=str(no_meta / 'metadata.yaml')):
        open_source({'format': 'rosbag', 'root': str(no_meta)})


def rosbag_cfg(bag):
    return {'format': 'rosbag', 'root': str(bag), 'topic': bf.IMAGE_TOPIC,
            'depth_topic': bf.GT_DEPTH_TOPIC, 'labels_topic': bf.GT_LABELS_TOPIC}


def test_dataset_reader_keeps_complete_frames_and_says_what_was_lost(bags, tmp_path, capsys):
    intact = bags['mcap']
    size = (intact / f'{intact.name}.mcap').stat().st_size
    bag, data = cut_mcap(intact, tmp_path / 'cut', int(size * 0.6))
    msgs = messages(intact)
    complete = complete_before(data, msgs, int(size * 0.6))
    source = open_source(rosbag_cfg(bag))
    err = capsys.readouterr().err
    assert len(source) == complete // TOPICS  # frames with image, depth and labels
    assert source.lost_messages == len(msgs) - complete
    assert source.lost_frames + len(source) + (len(msgs) - complete) // TOPICS >= N_FRAMES
    assert f'{len(msgs) - complete} of {len(msgs)} messages' in err and str(bag) in err
    frame = source.load(len(source) - 1)
    assert frame['image'].shape == (64, 192, 3) and frame['labels'] is not None

    sq = uncommitted_sqlite(bags['sqlite3'], tmp_path / 'sq', committed=7)
    source = open_source(rosbag_cfg(sq))
    assert len(source) == 7 and source.lost_messages == (N_FRAMES - 7) * TOPICS
    assert 'uncommitted transaction' in capsys.readouterr().err


def test_make_bag_overwrite_from_a_cut_short_bag(bags, tmp_path, capsys):
    src = uncommitted_sqlite(bags['sqlite3'], tmp_path / 'src', committed=6)
    size = (bags['mcap'] / f'{bags["mcap"].name}.mcap').stat().st_size
    out, _ = cut_mcap(bags['mcap'], tmp_path / 'out', size // 2)  # a killed earlier run
    sets = [f'data.eval.{k}={v}' for k, v in rosbag_cfg(src).items()]
    rc = make_bag.main(['--data', 'test', '--split', 'all', '--out', str(out), '--overwrite',
                        '--quiet', '--set', *sets])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f'{(N_FRAMES - 6) * TOPICS} of {N_FRAMES * TOPICS} messages' in captured.err
    assert 'wrote 6 frames' in captured.out
    check = check_bag(out)
    assert not check.cut_short and check.found[bf.IMAGE_TOPIC] == 6


def test_replay_reads_the_complete_frames_and_reports_the_loss(bags, tmp_path, capsys):
    src = uncommitted_sqlite(bags['sqlite3'], tmp_path / 'sq', committed=4)
    opts = replay.ReplayOptions(bag=str(src), progress=False)
    bag = replay.RecordedBag(opts)
    try:
        assert len(bag.frames) == 4
        assert bag.check.as_dict()['messages_lost'] == (N_FRAMES - 4) * TOPICS
        assert bag.image(bag.frames[-1][1]).shape == (64, 192, 3)
        assert bag.ground_truth('labels', bag.frames[-1][1]) is not None
    finally:
        bag.close()
    assert 'bag cut short' in capsys.readouterr().err
    # A bag that cannot be read at all stops replay with an error naming the file.
    stub, _ = cut_mcap(bags['mcap'], tmp_path / 'stub', 5)
    assert replay.main(['--bag', str(stub)]) == 2
    assert str(stub / 'stub.mcap') in capsys.readouterr().err
