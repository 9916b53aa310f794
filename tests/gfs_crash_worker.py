"""Changes a SQLite GFS database in a loop until killed: test_gfs_storage's crash test.

argv: the database file, a run number (seeds the randomness, numbers the records).
stdout, one flushed line each: ``do <op> <path> <token>`` before a change, ``ok`` once it
has committed, so the test knows every committed change and the one in flight.

- ``w``: replace ``/w/<k>`` with ``sha256(body) + body``; token: that hash (hex).
- ``u``: the same into ``/up/<k>`` through an upload staged in shuffled pieces.
- ``a``: append one record to ``/log/<k>``; ``ua``: append 1-4 records through an upload.
  Token: the first record's number, and how many.  A record is ``RECORD`` bytes: its
  number, then the SHA-256 of that (see :func:`record`), so a torn one shows.
"""

from __future__ import annotations

import hashlib
import random
import sys

from runtime.gfs.sqlite import SqliteStorage

CHUNK = 100  # not a multiple of RECORD: appends straddle chunk boundaries
RECORD = 48
FILES = 3


def record(number: int) -> bytes:
    head = b"rec %012d" % number
    return head + hashlib.sha256(head).digest()


def whole(body: bytes) -> bytes:
    return hashlib.sha256(body).digest() + body


def main() -> None:
    path, run = sys.argv[1], int(sys.argv[2])
    rng = random.Random(run)
    storage = SqliteStorage(path, chunk_size=CHUNK)
    for folder in ("/w", "/up", "/log"):
        storage.mkdir(folder, 0.0, exist_ok=True)
    number = run * 10**6  # record numbers grow from run to run
    for step in range(10**9):
        op, k = rng.choice(("w", "u", "a", "ua")), rng.randrange(FILES)
        if op in ("w", "u"):
            body = rng.randbytes(rng.randrange(0, 8 * CHUNK))
            target = f"{'/w' if op == 'w' else '/up'}/{k}"
            print("do", op, target, hashlib.sha256(body).hexdigest(), flush=True)
            data = whole(body)
        else:
            count = 1 if op == "a" else rng.randrange(1, 5)
            target = f"/log/{k}"
            print("do", op, target, number, count, flush=True)
            data = b"".join(record(number + i) for i in range(count))
            number += count
        if op == "w" or op == "a":
            storage.write(target, data, "w" if op == "w" else "a", float(step))
        else:
            upload = f"{run}-{step}"
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 4)))
            pieces = list(zip([0, *cuts], [*cuts, len(data)]))
            rng.shuffle(pieces)
            for start, end in pieces:
                storage.stage(upload, start, data[start:end], float(step))
            storage.commit_upload(upload, target, "w" if op == "u" else "a", float(step))
        print("ok", flush=True)


if __name__ == "__main__":
    main()
