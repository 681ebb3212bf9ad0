#!/usr/bin/env python3
"""A mail-shaped SQLite database for benchmarks, and a steady mail load on it.

  maildb.py create DB --mib 200     new WAL-mode db of about that size
  maildb.py load DB --count 300 --rate 30
                                    insert COUNT messages at RATE per second,
                                    one transaction each (like a catcher
                                    receiving mail); prints the last id

Messages look like what a mail catcher stores: a row of headers, snippet and
search text, and the raw RFC 5322 message in a separate table. Bodies are
letter-frequency text (compresses roughly like prose, never repeats across
messages) and about a quarter carry a base64 attachment of random bytes
(incompressible beyond base64's 3/4), so compression ratios are realistic.
Deterministic for a given --seed.
"""
import argparse
import base64
import os
import random
import sqlite3
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS mailbox (
  id INTEGER PRIMARY KEY,
  message_id TEXT NOT NULL,
  created INTEGER NOT NULL,
  subject TEXT NOT NULL,
  from_addr TEXT NOT NULL,
  to_addr TEXT NOT NULL,
  size INTEGER NOT NULL,
  snippet TEXT NOT NULL,
  search_text TEXT NOT NULL,
  read INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS mailbox_created ON mailbox(created);
CREATE TABLE IF NOT EXISTS mailbox_data (id INTEGER PRIMARY KEY, raw BLOB NOT NULL);
"""

# Bytes -> letters with roughly English frequencies plus spaces and newlines.
_FREQ = "eeeeeeeeeeeetttttttttaaaaaaaaooooooooiiiiiiinnnnnnnsssssshhhhhhrrrrrrddddlllluuucccmmmwwffggyyppbbvk"
_ALPHABET = (_FREQ + " " * 20 + ".,\n")
_TABLE = bytes(ord(_ALPHABET[i % len(_ALPHABET)]) for i in range(256))


def text(rng, n):
    return rng.randbytes(n).translate(_TABLE).decode("ascii")


def message(rng, i, now):
    subject = text(rng, rng.randint(20, 70)).replace("\n", " ").strip() or "hello"
    frm = f"sender{rng.randint(1, 500)}@example.com"
    to = f"user{rng.randint(1, 2000)}@example.org"
    body = text(rng, rng.randint(1500, 30000))
    mid = f"<{i}.{rng.getrandbits(64):016x}@bench.mailsafe>"
    parts = [
        f"Message-ID: {mid}\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime(now))}\r\n"
        f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
    ]
    if rng.random() < 0.25:
        att = base64.encodebytes(rng.randbytes(rng.randint(10_000, 150_000))).decode()
        parts.append(
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n--b1\r\n"
            'Content-Type: application/octet-stream; name="report.bin"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + att + "\r\n--b1--\r\n")
    else:
        parts.append("Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n")
    raw = "".join(parts).encode()
    return (mid, int(now * 1000), subject, frm, to, len(raw), body[:250],
            (subject + " " + body[:2000]).lower()), raw


def connect(path):
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=30000")
    db.executescript(SCHEMA)
    return db


def insert(db, rng, i, now):
    row, raw = message(rng, i, now)
    db.execute("BEGIN IMMEDIATE")
    cur = db.execute(
        "INSERT INTO mailbox (message_id, created, subject, from_addr, to_addr, size, snippet, search_text)"
        " VALUES (?,?,?,?,?,?,?,?)", row)
    db.execute("INSERT INTO mailbox_data (id, raw) VALUES (?,?)", (cur.lastrowid, raw))
    db.execute("COMMIT")
    return cur.lastrowid, len(raw)


def create(args):
    if os.path.exists(args.db):
        os.remove(args.db)
    rng = random.Random(args.seed)
    db = connect(args.db)
    target = args.mib * 1024 * 1024
    i, now = 0, time.time() - 86400 * 30
    db.execute("BEGIN")
    while True:
        row, raw = message(rng, i, now)
        cur = db.execute(
            "INSERT INTO mailbox (message_id, created, subject, from_addr, to_addr, size, snippet, search_text)"
            " VALUES (?,?,?,?,?,?,?,?)", row)
        db.execute("INSERT INTO mailbox_data (id, raw) VALUES (?,?)", (cur.lastrowid, raw))
        i += 1
        now += rng.random() * 200
        if i % 500 == 0:
            db.execute("COMMIT")
            size = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
            if size >= target:
                break
            db.execute("BEGIN")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"{args.db}: {i} messages, {os.path.getsize(args.db) / 2**20:.1f} MiB")


def load(args):
    rng = random.Random(args.seed ^ 0x5EED)
    db = connect(args.db)
    start = time.monotonic()
    last = 0
    for n in range(args.count):
        # Paced against the start time so the rate holds even if an insert
        # waits for a lock.
        delay = start + n / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        last, _ = insert(db, rng, n, time.time())
    db.close()
    print(last)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("db")
    c.add_argument("--mib", type=int, default=200)
    c.add_argument("--seed", type=int, default=1)
    l = sub.add_parser("load")
    l.add_argument("db")
    l.add_argument("--count", type=int, default=300)
    l.add_argument("--rate", type=float, default=30)
    l.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    {"create": create, "load": load}[args.cmd](args)


if __name__ == "__main__":
    main()
