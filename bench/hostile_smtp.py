"""Hostile SMTP mix against a running `mailsafe serve`, sampling its memory.

Usage: hostile_smtp.py PID SMTP_PORT [--only-big]

Phases (each bounded): 800 idle connections held throughout; 16 sessions
streaming a 30 MB message each at once (480 MB of demand against the
global cap); 8 sessions streaming 80 MB past the 50 MB limit; megabyte
lines, NUL bytes and 10k pipelined RCPTs; 50 slow-loris sessions. A normal
client sends a small message every 100 ms meanwhile. Prints one JSON object
with VmRSS after each phase, the peak (VmHWM), reply counts and the normal
client's success count and latency.
"""
import asyncio
import base64
import json
import os
import sys
import threading
import time

import rss  # bench/rss.py: the shared RSS sampler

PID, PORT = int(sys.argv[1]), int(sys.argv[2])
ONLY_BIG = "--only-big" in sys.argv
MB = 1_000_000


def status(field):
    return rss.status(PID, field)


async def reply(reader):
    while True:
        line = await asyncio.wait_for(reader.readline(), 120)
        if not line:
            return 0
        if line[3:4] != b"-":
            return int(line[:3])


async def connect():
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    code = await reply(r)
    return r, w, code


async def start_data(r, w):
    w.write(b"EHLO bench\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n")
    codes = [await reply(r) for _ in range(4)]
    return codes[-1] == 354


def big_message(size):
    """A small text body and a base64 attachment of about `size` bytes
    (attachments are not full-text indexed, so the cost is transport)."""
    raw = os.urandom(size * 3 // 4)
    b64 = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    head = (
        b"Subject: big\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain\r\n\r\nsee attachment\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="blob.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head + b64 + b"--b--\r\n"


async def stream(payload, chunk=1 << 20):
    """One session sending `payload` as DATA; returns the final code."""
    try:
        r, w, _ = await connect()
        if not await start_data(r, w):
            w.close()
            return "refused-data"
        for i in range(0, len(payload), chunk):
            w.write(payload[i : i + chunk])
            await w.drain()
        w.write(b".\r\n")
        await w.drain()
        code = await reply(r)
        w.close()
        return code
    except (ConnectionError, asyncio.TimeoutError) as e:
        return type(e).__name__


async def normal_sender(stop, stats):
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            r, w, _ = await connect()
            ok = await start_data(r, w)
            if ok:
                w.write(b"Subject: normal\r\n\r\nhello\r\n.\r\n")
                await w.drain()
                ok = await reply(r) == 250
            w.write(b"QUIT\r\n")
            w.close()
        except (ConnectionError, asyncio.TimeoutError):
            ok = False
        if ok:
            stats["ok"] += 1
            stats["lat"].append((time.monotonic() - t0) * 1000)
        else:
            stats["fail"] += 1
        await asyncio.sleep(0.1)


def count(codes):
    out = {}
    for c in codes:
        out[str(c)] = out.get(str(c), 0) + 1
    return out


async def main():
    sampler = rss.Sampler(PID)
    sampler.start()
    res = {"baseline_rss_mib": status("VmRSS")}
    big = big_message(30 * MB)
    if ONLY_BIG:
        codes = await asyncio.gather(*(stream(big) for _ in range(16)))
        res["big_16x30MB"] = {"replies": count(codes), "peak_rss_mib": sampler.take()}
        res["hwm_mib"] = status("VmHWM")
        print(json.dumps(res))
        return
    stop, stats = asyncio.Event(), {"ok": 0, "fail": 0, "lat": []}
    sender = asyncio.create_task(normal_sender(stop, stats))

    idle = []
    for _ in range(800):
        r, w, code = await connect()
        assert code == 220, code
        idle.append((r, w))
    await asyncio.sleep(1)
    res["idle_800_rss_mib"] = sampler.take()

    codes = await asyncio.gather(*(stream(big) for _ in range(16)))
    res["big_16x30MB"] = {"replies": count(codes), "peak_rss_mib": sampler.take()}
    del big

    endless = b"z" * 998 + b"\r\n"
    endless = endless * (80 * MB // len(endless))
    codes = await asyncio.gather(*(stream(endless) for _ in range(8)))
    res["endless_8x80MB"] = {"replies": count(codes), "peak_rss_mib": sampler.take()}
    del endless

    async def garbage():
        r, w, _ = await connect()
        w.write(b"A" * (8 << 20) + b"\0\0\r\n")
        c1 = await reply(r)
        w.write(b"EHLO x\r\nMAIL FROM:<a@x>\r\n")
        await reply(r), await reply(r)
        w.write(b"".join(b"RCPT TO:<r%d@y>\r\n" % i for i in range(10_000)))
        rc = [await reply(r) for _ in range(10_000)]
        w.close()
        return c1, rc.count(250), rc.count(452)

    res["lines_nul_rcpt_x4"] = {
        "replies": [list(x) for x in await asyncio.gather(*(garbage() for _ in range(4)))],
        "peak_rss_mib": sampler.take(),
    }

    async def loris():
        """One byte every 0.5 s, never a full line: only the idle timeout
        (progress = complete lines) can end it."""
        r, w, _ = await connect()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            try:
                w.write(b"N")
                await w.drain()
            except ConnectionError:
                return "reset", round(time.monotonic() - t0, 1)
            try:
                line = await asyncio.wait_for(r.readline(), 0.5)
            except asyncio.TimeoutError:
                continue
            return (line[:3].decode() or "closed"), round(time.monotonic() - t0, 1)
        return "still-open", 60.0

    lor = await asyncio.gather(*(loris() for _ in range(50)))
    res["slow_loris_50"] = {
        "replies": count(c for c, _ in lor),
        "max_seconds": max(t for _, t in lor),
        "peak_rss_mib": sampler.take(),
    }

    stop.set()
    await sender
    for _, w in idle:
        w.close()
    lat = sorted(stats["lat"]) or [0]
    res["normal_client"] = {
        "ok": stats["ok"],
        "failed": stats["fail"],
        "p50_ms": round(lat[len(lat) // 2], 1),
        "p99_ms": round(lat[min(len(lat) - 1, len(lat) * 99 // 100)], 1),
    }
    await asyncio.sleep(1)
    res["after_rss_mib"] = status("VmRSS")
    res["hwm_mib"] = status("VmHWM")
    sampler.running = False
    print(json.dumps(res))


asyncio.run(main())
