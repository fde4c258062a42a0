"""Open a rosbag2 that may have been cut short (the recorder was killed), never silently.

A killed recorder leaves an mcap without its summary and footer, or a sqlite3 file whose
last transaction never committed (a hot ``-journal`` or a ``-wal`` next to it), while
``metadata.yaml`` may list more messages than the files hold. :func:`open_bag` reads every
complete message and says how many were lost, or raises :class:`BagError` naming the file:

* mcap without its footer: the complete records are copied to a temporary, indexed mcap
  (messages of an uncompressed chunk cut in the middle are kept up to the cut);
* sqlite3 with a journal or WAL: a temporary copy is opened once read-write, so SQLite
  rolls back the uncommitted transaction (or applies the committed WAL) exactly as it would
  for a writer, and is checked with ``PRAGMA quick_check``;
* always: the messages each file holds are counted against ``metadata.yaml``.

The original bag is never modified. ``training.replay`` and the rosbag dataset reader
(``training.data``, format rosbag, so ``training.make_bag`` too) open bags through here.
"""
import shutil
import sqlite3
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from ruamel.yaml import YAML

MAGIC = b'\x89MCAP0\r\n'
OP_HEADER, OP_FOOTER, OP_CHUNK, OP_DATA_END = 0x01, 0x02, 0x06, 0x0F
SQLITE_SIDECARS = ('-journal', '-wal', '-shm')


class BagError(ValueError):
    """A bag that cannot be read; the message names the file."""


@dataclass
class BagCheck:
    """What :func:`open_bag` found: messages per topic expected and readable."""

    path: Path
    read_path: Path
    expected: dict = field(default_factory=dict)
    found: dict = field(default_factory=dict)
    damaged: list = field(default_factory=list)  # (file, what was wrong)
    _tmp: object = None

    @property
    def lost(self):
        """Messages ``metadata.yaml`` lists that no file holds (0 for an intact bag)."""
        return sum(max(n - self.found.get(t, 0), 0) for t, n in self.expected.items())

    def lost_on(self, topic):
        return max(self.expected.get(topic, 0) - self.found.get(topic, 0), 0)

    @property
    def cut_short(self):
        return bool(self.damaged or self.lost)

    def summary(self):
        """One line for the user: what was wrong, and how many messages were lost."""
        what = '; '.join(f'{f}: {w}' for f, w in self.damaged) or f'{self.path}'
        total = sum(self.expected.values())
        return (f'bag cut short ({what}): read every complete message, {self.lost} of '
                f'{total} messages listed in metadata.yaml lost')

    def as_dict(self):
        return {'cut_short': self.cut_short, 'messages_expected': sum(self.expected.values()),
                'messages_found': sum(self.found.values()), 'messages_lost': self.lost,
                'damaged_files': [f'{f}: {w}' for f, w in self.damaged]}


def _metadata(path):
    yaml_path = path / 'metadata.yaml'
    if not yaml_path.is_file():
        raise BagError(f'{yaml_path} not found: not a rosbag2 directory, or its recording was '
                       f'cut short before the metadata was written (ros2 bag reindex '
                       f'{path} rebuilds it)')
    try:
        info = YAML(typ='safe').load(yaml_path.read_text())['rosbag2_bagfile_information']
        files = [path / Path(p).name for p in info['relative_file_paths']]
        expected = {}
        for topic in info['topics_with_message_count']:
            name = topic['topic_metadata']['name']
            expected[name] = expected.get(name, 0) + int(topic['message_count'])
        return info['storage_identifier'], files, expected
    except Exception as exc:  # noqa: BLE001 - YAML and key errors alike
        raise BagError(f'{yaml_path}: unreadable bag metadata: {exc}') from None


def _records(data, start, end):
    """Yield ``(op, offset, next_offset)`` of the complete records in ``data[start:end]``."""
    pos = start
    while pos + 9 <= end:
        op, length = data[pos], struct.unpack_from('<Q', data, pos + 1)[0]
        if pos + 9 + length > end:
            return
        yield op, pos, pos + 9 + length
        pos += 9 + length


def _partial_chunk(data, pos):
    """Return the complete inner records of an uncompressed chunk cut short at the end."""
    body = pos + 9 + 8 + 8 + 8 + 4
    if body + 4 > len(data):
        return b''
    (name_len,) = struct.unpack_from('<I', data, body)
    compression = bytes(data[body + 4:body + 4 + name_len])
    records = body + 4 + name_len + 8
    if compression or records > len(data):
        return b''  # compressed data cannot be cut: the whole chunk is lost
    kept = [data[a:b] for _, a, b in _records(data, records, len(data))]
    return b''.join(kept)


def repair_mcap(src, dst):
    """Copy the complete records of a footer-less mcap ``src`` to a linear mcap ``dst``."""
    data = memoryview(Path(src).read_bytes())
    if len(data) < 8 + 9 or bytes(data[:8]) != MAGIC or data[8] != OP_HEADER:
        raise BagError(f'{src}: not an mcap file (bad magic or header)')
    out = [bytes(data[:8])]
    end = 8
    for op, a, b in _records(data, 8, len(data)):
        if op in (OP_DATA_END, OP_FOOTER):
            break
        out.append(bytes(data[a:b]))
        end = b
    else:
        if end < len(data) and data[end] == OP_CHUNK:
            out.append(_partial_chunk(data, end))
    out.append(bytes([OP_DATA_END]) + struct.pack('<QI', 4, 0))
    out.append(bytes([OP_FOOTER]) + struct.pack('<QQQI', 20, 0, 0, 0) + MAGIC)
    Path(dst).write_bytes(b''.join(out))


def _mcap_complete(path):
    size = path.stat().st_size
    if size < 8 + 37:
        return False
    with open(path, 'rb') as f:
        f.seek(-37, 2)
        tail = f.read()
    return tail[-8:] == MAGIC and tail[:9] == bytes([OP_FOOTER]) + struct.pack('<Q', 20)


def _sqlite_recover(src, dst):
    """Copy ``src`` with its journal/WAL and let SQLite recover the copy; check it."""
    for suffix in ('', *SQLITE_SIDECARS):
        if Path(f'{src}{suffix}').exists():
            shutil.copyfile(f'{src}{suffix}', f'{dst}{suffix}')
    try:
        con = sqlite3.connect(dst)
        try:
            con.execute('SELECT count(*) FROM messages').fetchone()  # hot journal: rollback
            con.execute('PRAGMA wal_checkpoint(TRUNCATE)')
            con.execute('PRAGMA journal_mode=DELETE')
            check = con.execute('PRAGMA quick_check').fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise BagError(f'{src}: damaged sqlite3 bag, cannot recover: {exc}') from None
    if check != 'ok':
        raise BagError(f'{src}: damaged sqlite3 bag: {check}')


def _sqlite_counts(path):
    uri = f'file:{path}?mode=ro'
    try:
        con = sqlite3.connect(uri, uri=True)
        try:
            rows = con.execute('SELECT topics.name, count(messages.id) FROM topics LEFT JOIN '
                               'messages ON topics.id = messages.topic_id '
                               'GROUP BY topics.id').fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise BagError(f'{path}: damaged sqlite3 bag: {exc}') from None
    return rows


def _rewrite_mcap(src_dir, dst_dir):
    """Copy every message of the (linear) bag ``src_dir`` into a new indexed mcap bag."""
    counts = {}
    with Reader(src_dir) as reader, Writer(dst_dir, version=9,
                                           storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {}
        for c in reader.connections:
            conns[c.id] = writer.add_connection(
                c.topic, c.msgtype, msgdef=c.msgdef.data or None, rihs01=c.digest or None,
                serialization_format=c.ext.serialization_format,
                offered_qos_profiles=c.ext.offered_qos_profiles)
        for conn, t, raw in reader.messages():
            writer.write(conns[conn.id], t, raw)
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
    return counts


def _mcap_counts(files):
    """Messages per topic of intact mcap files, from their own summary statistics."""
    from rosbags.rosbag2.storage_mcap import McapReader
    counts = {}
    for f in files:
        storage = McapReader(f)
        storage.open()
        try:
            for c in storage.connections:
                counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        finally:
            storage.close()
    return counts


def check_bag(path):
    """Check a bag and, if it was cut short, build a readable copy; return a BagCheck.

    ``BagCheck.read_path`` is the bag to open (the original when intact); the temporary
    copy lives as long as the BagCheck.
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f'bag not found: {path}')
    if not path.is_dir():
        raise BagError(f'{path}: a rosbag2 is a directory (with metadata.yaml)')
    storage, files, expected = _metadata(path)
    if missing := [str(f) for f in files if not f.is_file()]:
        raise BagError(f'{path}: storage files listed in metadata.yaml are missing: {missing}')
    result = BagCheck(path, path, expected)
    if storage == 'mcap':
        result.damaged = [(f, 'no mcap footer/summary (recording cut short)')
                          for f in files if not _mcap_complete(f)]
    elif storage == 'sqlite3':
        result.damaged = [(f, f'uncommitted transaction ({f.name}{s} left by the recorder)')
                          for f in files for s in SQLITE_SIDECARS[:2]
                          if Path(f'{f}{s}').exists()]
    else:
        raise BagError(f'{path}: storage {storage!r} not supported (mcap or sqlite3)')
    if result.damaged:
        result._tmp = tempfile.TemporaryDirectory(prefix='bag_check_')
        work = Path(result._tmp.name) / path.name
        work.mkdir()
        shutil.copyfile(path / 'metadata.yaml', work / 'metadata.yaml')
        bad = {f for f, _ in result.damaged}
        for f in files:
            if f not in bad:
                (work / f.name).symlink_to(f.resolve())
            elif storage == 'mcap':
                repair_mcap(f, work / f.name)
            else:
                _sqlite_recover(f, work / f.name)
        result.read_path = work
    try:
        if storage == 'sqlite3':
            for f in files:
                for topic, n in _sqlite_counts(result.read_path / f.name):
                    result.found[topic] = result.found.get(topic, 0) + n
        elif result.damaged:  # an indexed copy: random access stays fast
            result.read_path = Path(result._tmp.name) / 'repaired'
            result.found = _rewrite_mcap(work, result.read_path)
        else:
            result.found = _mcap_counts(files)
    except BagError:
        raise
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types
        raise BagError(f'cannot read bag {path} ({", ".join(str(f) for f in files)}): '
                       f'{exc}') from None
    for topic, n in result.found.items():
        if n > expected.get(topic, 0):
            raise BagError(f'{path}: {topic} holds {n} messages but metadata.yaml lists '
                           f'{expected.get(topic, 0)}; the metadata is stale (ros2 bag '
                           f'reindex {path})')
    return result


def open_bag(path):
    """Return ``(opened rosbags Reader, BagCheck)`` for a bag that may be cut short."""
    check = check_bag(path)
    try:
        reader = Reader(check.read_path)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types
        raise BagError(f'cannot open bag {path}: {exc}') from exc
    reader.bag_check = check  # keeps the temporary copy alive as long as the reader
    return reader, check
