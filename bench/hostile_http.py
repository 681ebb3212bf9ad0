"""Hostile HTTP mix against a running `mailsafe serve`, sampling its memory.

Usage: hostile_http.py PID HTTP_PORT SMTP_PORT

Phases (each bounded): 300 slow-loris connections sending half a request
head (held until the server closes them); 300 websocket subscribers that
never read while 200 mails arrive over SMTP; 8 x 60 MB `PUT /api/v1/tags`
bodies at once (2.4 M IDs each); one `POST /api/v1/send` near the 50 MB
limit (a 36 MB incompressible attachment, 48 MB of JSON); GETs of that
message one after another (raw, the attachment part, the message view, the
text view), each read to the end; 4 x 20 MB `POST /api/v1/send` at once.
A normal client polls `GET /api/v1/messages` every 100 ms meanwhile. Prints
one JSON object: VmRSS peak per phase, VmHWM, status counts, how long the
slow-loris connections lived, and the normal client's latency.
"""
import asyncio
import base64
import os
import json
import sys
import threading
import time
import http.client

import rss  # bench/rss.py: the shared RSS sampler

PID, PORT, SMTP = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
HOST = f"127.0.0.1:{PORT}"


def status(field):
    return rss.status(PID, field)


class Normal(threading.Thread):
    """A normal API client from another address (127.0.0.2, so the per-IP
    cap that the slow-loris clients fill is not its own): one list request
    every 100 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.lat, self.failed, self.running = [], 0, True

    def run(self):
        while self.running:
            t = time.monotonic()
            try:
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30, source_address=("127.0.0.2", 0))
                c.request("GET", "/api/v1/messages?limit=10")
                c.getresponse().read()
                c.close()
                self.lat.append((time.monotonic() - t) * 1000)
            except Exception:
                self.failed += 1
            time.sleep(0.1)


async def status_line(reader):
    """The status code answered, or "reset" when the server's close (after
    refusing a body early) overtook its answer."""
    try:
        line = await asyncio.wait_for(reader.readline(), 120)
    except ConnectionError:
        return "reset"
    return line.split(b" ")[1].decode() if line.count(b" ") >= 1 else "closed"


async def slow_loris(n):
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", PORT)
        w.write(f"GET /api/v1/messages HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())
        await w.drain()
        conns.append((r, w))
    start = time.monotonic()

    async def until_closed(r):
        try:
            await asyncio.wait_for(r.read(), 120)
        except Exception:
            pass
        return time.monotonic() - start

    lived = await asyncio.gather(*(until_closed(r) for r, _ in conns))
    for _, w in conns:
        w.close()
    return {"n": n, "max_seconds": round(max(lived), 1)}


async def big_tags(total=60_000_000):
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    w.write(
        f"PUT /api/v1/tags HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {total}\r\nConnection: close\r\n\r\n".encode()
    )
    chunk = b'"abcdefghijklmnopqrstuv",' * 40000
    sent = 0

    async def send():
        nonlocal sent
        try:
            w.write(b'{"IDs":[')
            while sent < total:
                w.write(chunk[: total - sent])
                sent += len(chunk)
                await w.drain()
        except Exception:
            pass

    sender = asyncio.ensure_future(send())
    code = await status_line(r)
    sender.cancel()
    w.close()
    return code


async def big_send(size=20_000_000, noise=False):
    data = os.urandom(size) if noise else b"x" * size
    content = base64.b64encode(data).decode()
    del data
    body = json.dumps({
        "From": {"Email": "a@example.com"}, "To": [{"Email": "b@example.com"}],
        "Subject": "big", "Text": "hi",
        "Attachments": [{"Filename": "big.bin", "Content": content}],
    }).encode()
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    w.write(
        f"POST /api/v1/send HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    )
    try:
        w.write(body)
        await w.drain()
    except Exception:
        pass
    code = await status_line(r)
    w.close()
    return code


def get_drain(path):
    """GETs `path`, reading the answer to the end in 64 KiB pieces; the
    status code."""
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    c.request("GET", path)
    res = c.getresponse()
    while res.read(65536):
        pass
    c.close()
    return str(res.status)


async def big_reads():
    """Reads the newest message (the 48 MB send) every way the API gives it,
    one request after another."""
    paths = ("/api/v1/message/latest/raw", "/api/v1/message/latest/part/2",
             "/api/v1/message/latest", "/view/latest.txt")
    return [await asyncio.to_thread(get_drain, p) for p in paths]


async def subscribers(n, mails):
    conns, codes = [], {}
    for i in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", PORT)
        w.write(
            f"GET /api/events HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        await w.drain()
        code = await status_line(r)
        codes[code] = codes.get(code, 0) + 1
        conns.append(w)  # never read again
    r, w = await asyncio.open_connection("127.0.0.1", SMTP)
    await r.readline()

    async def cmd(line):
        w.write(line.encode() + b"\r\n")
        await w.drain()
        while True:
            reply = await asyncio.wait_for(r.readline(), 60)
            if reply[3:4] != b"-":
                return reply[:3].decode()

    await cmd("EHLO bench")
    body = "Subject: live\r\n\r\n" + ("x" * 76 + "\r\n") * 400
    for _ in range(mails):
        await cmd("MAIL FROM:<a@x>")
        await cmd("RCPT TO:<b@y>")
        await cmd("DATA")
        await cmd(body + ".")
    await cmd("QUIT")
    for c in conns:
        c.close()
    return codes


async def main():
    out = {"baseline_rss_mib": status("VmRSS")}
    sampler = rss.Sampler(PID)
    sampler.start()
    normal = Normal()
    normal.start()
    out["slow_loris_300"] = await slow_loris(300)
    out["slow_loris_300"]["peak_rss_mib"] = sampler.take()
    # Subscribers before the big bodies: glibc keeps freed memory, so a
    # phase after them would start from their leftovers.
    codes = await subscribers(300, 200)
    out["ws_300_not_reading"] = {"codes": codes, "peak_rss_mib": sampler.take()}
    codes = await asyncio.gather(*(big_tags() for _ in range(8)))
    out["tags_8x60MB"] = {"codes": codes, "peak_rss_mib": sampler.take()}
    # One send near the size limit, alone: what a single request raises the
    # peak by (the acceptance is 64 MiB).
    start = status("VmRSS")
    code = await big_send(36_000_000, noise=True)
    peak = sampler.take()
    out["send_1x48MB"] = {"codes": [code], "peak_rss_mib": peak, "rise_mib": peak - start}
    # Reading that message back, request by request (raw, part, message,
    # text view): what one GET of a 48 MB message raises the peak by.
    start = status("VmRSS")
    codes = await big_reads()
    peak = sampler.take()
    out["get_48MB"] = {"codes": codes, "peak_rss_mib": peak, "rise_mib": peak - start}
    codes = await asyncio.gather(*(big_send() for _ in range(4)))
    out["send_4x20MB"] = {"codes": codes, "peak_rss_mib": sampler.take()}
    await asyncio.sleep(1)
    out["after_rss_mib"] = status("VmRSS")
    out["hwm_mib"] = status("VmHWM")
    normal.running = False
    sampler.running = False
    lat = sorted(normal.lat) or [0]
    out["normal_client"] = {
        "ok": len(normal.lat), "failed": normal.failed,
        "p50_ms": round(lat[len(lat) // 2], 1), "p99_ms": round(lat[int(len(lat) * 0.99)], 1),
    }
    print(json.dumps(out))


asyncio.run(main())
