#!/usr/bin/env python3
"""Metering and fault-injecting HTTP proxy for S3 (benchmarks and fault tests).

Sits between an S3 client (mailsafe, litestream) and an S3 server on
127.0.0.1, forwarding requests byte for byte (so SigV4 signatures, which
cover the Host header, stay valid), and counts requests, status codes and
bytes by operation. Optionally injects faults: a fraction of requests answered
503 SlowDown, connections reset mid-body, added latency, full outages.

Faults follow a fixed schedule, not a dice roll: with a rate r, the first
eligible request after the rate is set faults, then one in every 1/r (an
accumulator adds r per request and fires each time it passes 1). A test that
makes N requests therefore sees exactly the faults N implies, whatever the
machine's speed; a random draw made "no fault in 10 requests" happen about
one run in thirty.

Usage:
  s3proxy.py --upstream http://127.0.0.1:PORT [--listen 127.0.0.1:0]
             [--port-file F] [--stats-file F] [--error-rate 0.3]
             [--reset-rate 0.1] [--latency-ms 2000]

It also works as a client's HTTP proxy (`HTTP_PROXY=http://127.0.0.1:PORT`):
a request in absolute form (`GET http://BUCKET.localhost:9000/key`) is sent
on to the upstream in origin form with its Host header untouched, whatever
host it names. That is how a test reaches a server on 127.0.0.1 with
virtual-hosted-style requests (`BUCKET.localhost`) that no resolver here
knows. The stats count the Host header of every request ("hosts").

The chosen port is printed on stdout as "PORT <n>" (and written to
--port-file). Control endpoints on the same port (bucket names cannot contain
"_", so they never shadow S3 paths):
  GET  /__proxy/stats              counters as JSON (with "headers": the
                                   SSE / storage-class values PUTs carried;
                                   "hosts": requests by Host header)
  POST /__proxy/reset              zero the counters
  GET  /__proxy/faults             current fault settings
  POST /__proxy/faults?error_rate=0.3&reset_rate=0.1&latency_ms=2000&outage_s=30
                                   change faults (omitted ones unchanged;
                                   outage_s=N refuses everything for N s)
On SIGTERM/SIGINT the counters are written to --stats-file as JSON.
"""
import argparse
import asyncio
import json
import signal
import socket
import struct
import sys
import time
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 64 * 1024
# Write options whose values the stats count (tests check they reach the
# server: server-side encryption, storage class).
WRITE_HEADERS = ("x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id",
                 "x-amz-storage-class")


class Stats:
    def __init__(self):
        self.reset()

    def reset(self):
        self.started = time.time()
        self.ops = {}
        self.status = {}
        self.faults = {"error_503": 0, "reset_request": 0, "reset_response": 0, "outage_refused": 0}
        # "name: value" of the write options each PUT/POST carried.
        self.headers = {}
        # Requests by Host header (the addressing style a client used).
        self.hosts = {}

    def record(self, op, req_wire, req_body, resp_wire, resp_body, status):
        o = self.ops.setdefault(op, {"requests": 0, "bytes_in": 0, "body_bytes_in": 0,
                                     "bytes_out": 0, "body_bytes_out": 0})
        o["requests"] += 1
        o["bytes_in"] += req_wire
        o["body_bytes_in"] += req_body
        o["bytes_out"] += resp_wire
        o["body_bytes_out"] += resp_body
        key = str(status)
        self.status[key] = self.status.get(key, 0) + 1

    def as_dict(self):
        total = {"requests": 0, "bytes_in": 0, "body_bytes_in": 0, "bytes_out": 0, "body_bytes_out": 0}
        for o in self.ops.values():
            for k in total:
                total[k] += o[k]
        return {"seconds": round(time.time() - self.started, 3), "total": total,
                "ops": self.ops, "status": self.status, "faults": dict(self.faults), "hosts": dict(self.hosts),
                "headers": dict(self.headers)}


class Schedule:
    """Deterministic "one request in 1/rate": see the module doc."""

    def __init__(self, rate=0.0):
        self.set(rate)

    def set(self, rate):
        self.rate = rate
        # Just below 1: the first request after a change faults.
        self.acc = 1.0 - 1e-9 if rate > 0 else 0.0

    def fire(self):
        if self.rate <= 0:
            return False
        self.acc += self.rate
        if self.acc >= 1.0:
            self.acc -= 1.0
            return True
        return False


class Faults:
    def __init__(self, error_rate=0.0, reset_rate=0.0, latency_ms=0):
        self.latency_ms = latency_ms
        self.outage_until = 0.0
        # Resets are split evenly between "mid-request" and "mid-response".
        self.errors = Schedule()
        self.reset_requests = Schedule()
        self.reset_responses = Schedule()
        self.set_error_rate(error_rate)
        self.set_reset_rate(reset_rate)

    def set_error_rate(self, rate):
        self.error_rate = rate
        self.errors.set(rate)

    def set_reset_rate(self, rate):
        self.reset_rate = rate
        self.reset_requests.set(rate / 2)
        self.reset_responses.set(rate / 2)

    def as_dict(self):
        return {"error_rate": self.error_rate, "reset_rate": self.reset_rate,
                "latency_ms": self.latency_ms,
                "outage_remaining_s": round(max(0.0, self.outage_until - time.time()), 3)}


STATS = Stats()
FAULTS = Faults()


class Closed(Exception):
    pass


def header(head_lines, name):
    name = name.lower()
    for line in head_lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name:
            return v.strip()
    return None


async def read_head(reader):
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise Closed()
        raise
    except asyncio.LimitOverrunError:
        raise Closed()
    return data, data.decode("latin-1").split("\r\n")[:-2]


async def read_chunked(reader):
    """Reads a chunked body verbatim; returns (raw bytes, payload length)."""
    raw = bytearray()
    payload = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:  # trailers up to an empty line
                t = await reader.readuntil(b"\r\n")
                raw += t
                if t == b"\r\n":
                    return bytes(raw), payload
        chunk = await reader.readexactly(size + 2)
        raw += chunk
        payload += size


def classify(method, target):
    path, _, query = target.partition("?")
    q = parse_qs(query, keep_blank_values=True)
    segments = [s for s in path.split("/") if s]
    if method == "GET" and (len(segments) <= 1 or "list-type" in q):
        return "LIST"
    if method == "PUT" and len(segments) == 1:
        return "CREATE_BUCKET"
    if method == "PUT" and "partNumber" in q:
        return "PUT_PART"
    if method == "POST" and "uploads" in q:
        return "MULTIPART_CREATE"
    if method == "POST" and "uploadId" in q:
        return "MULTIPART_COMPLETE"
    if method == "POST" and "delete" in q:
        return "DELETE_MULTI"
    return method


def abort(writer):
    """Closes with a TCP RST (SO_LINGER 0), like a crashed peer."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


def simple_response(status, reason, body, ctype="application/xml", close=False):
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n")
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def control(method, target, writer):
    url = urlsplit(target)
    q = {k: v[-1] for k, v in parse_qs(url.query).items()}
    if url.path == "/__proxy/stats":
        body = json.dumps(STATS.as_dict(), indent=1).encode()
    elif url.path == "/__proxy/reset" and method == "POST":
        STATS.reset()
        body = b"{}"
    elif url.path == "/__proxy/faults":
        if method == "POST":
            if "error_rate" in q:
                FAULTS.set_error_rate(float(q["error_rate"]))
            if "reset_rate" in q:
                FAULTS.set_reset_rate(float(q["reset_rate"]))
            if "latency_ms" in q:
                FAULTS.latency_ms = int(q["latency_ms"])
            if "outage_s" in q:
                FAULTS.outage_until = time.time() + float(q["outage_s"])
        body = json.dumps(FAULTS.as_dict()).encode()
    else:
        writer.write(simple_response(404, "Not Found", b"unknown control path", "text/plain"))
        return
    writer.write(simple_response(200, "OK", body, "application/json"))


async def relay_response(up_reader, writer, method, cut):
    """Relays one final response from upstream; returns (wire, body, status,
    keep_alive). With `cut`, sends the head and half the body, then raises
    Closed after resetting the client connection."""
    while True:
        raw_head, lines = await read_head(up_reader)
        status = int(lines[0].split()[1])
        if status >= 200:
            break  # 1xx interim answers were already given to the client by us
    te = (header(lines, "transfer-encoding") or "").lower()
    cl = header(lines, "content-length")
    conn = (header(lines, "connection") or "").lower()
    keep = conn != "close"
    if method == "HEAD" or status in (204, 304):
        body, payload = b"", 0
    elif "chunked" in te:
        body, payload = await read_chunked(up_reader)
    elif cl is not None:
        body = await up_reader.readexactly(int(cl))
        payload = len(body)
    else:
        body = await up_reader.read()
        payload = len(body)
        keep = False
    if cut:
        writer.write(raw_head + body[: len(body) // 2])
        await writer.drain()
        abort(writer)
        return len(raw_head) + len(body) // 2, payload // 2, status, False
    writer.write(raw_head + body)
    await writer.drain()
    return len(raw_head) + len(body), payload, status, keep


async def handle(reader, writer, upstream):
    up = None  # (reader, writer) to upstream, opened lazily, reused
    try:
        while True:
            # The outage is applied after the head is read, so that the
            # control API keeps answering during an outage.
            try:
                raw_head, lines = await read_head(reader)
            except (Closed, asyncio.IncompleteReadError, ConnectionError):
                return
            method, target, version = lines[0].split(" ", 2)
            if target.startswith("http://"):
                # Used as an HTTP proxy: on to the upstream in origin form.
                u = urlsplit(target)
                target = (u.path or "/") + (f"?{u.query}" if u.query else "")
                raw_head = f"{method} {target} {version}".encode("latin-1") + \
                    raw_head[raw_head.index(b"\r\n"):]
            if target.startswith("/__proxy/"):
                await control(method, target, writer)
                await writer.drain()
                continue
            host = header(lines, "host") or ""
            STATS.hosts[host] = STATS.hosts.get(host, 0) + 1
            if time.time() < FAULTS.outage_until:
                STATS.faults["outage_refused"] += 1
                abort(writer)
                return
            if (header(lines, "expect") or "").lower() == "100-continue":
                # Answer the client ourselves so it sends the body now;
                # upstream's own 100 is skipped in relay_response.
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            te = (header(lines, "transfer-encoding") or "").lower()
            cl = int(header(lines, "content-length") or 0)
            if "chunked" not in te and cl > 1 and FAULTS.reset_requests.fire():
                await reader.readexactly(cl // 2)
                STATS.faults["reset_request"] += 1
                STATS.record(classify(method, target), len(raw_head) + cl // 2, cl // 2, 0, 0, "reset")
                abort(writer)
                return
            if "chunked" in te:
                body, payload = await read_chunked(reader)
            else:
                body = await reader.readexactly(cl) if cl else b""
                payload = len(body)
            op = classify(method, target)
            if method in ("PUT", "POST"):
                for name in WRITE_HEADERS:
                    value = header(lines, name)
                    if value is not None:
                        k = f"{name}: {value}"
                        STATS.headers[k] = STATS.headers.get(k, 0) + 1
            if FAULTS.latency_ms:
                await asyncio.sleep(FAULTS.latency_ms / 1000)
            if FAULTS.errors.fire():
                STATS.faults["error_503"] += 1
                resp = simple_response(503, "Slow Down", (
                    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                    b"<Message>Please reduce your request rate.</Message></Error>"))
                writer.write(resp)
                await writer.drain()
                STATS.record(op, len(raw_head) + len(body), payload, len(resp), 0, 503)
                continue
            cut = FAULTS.reset_responses.fire()
            for attempt in (1, 2):
                if up is None:
                    up = await asyncio.open_connection(upstream[0], upstream[1])
                try:
                    up[1].write(raw_head + body)
                    await up[1].drain()
                    wire, resp_payload, status, keep = await relay_response(up[0], writer, method, cut)
                    break
                except (Closed, asyncio.IncompleteReadError, ConnectionError):
                    # Upstream closed a kept-alive connection: reconnect once.
                    up[1].close()
                    up = None
                    if attempt == 2:
                        raise
            if cut:
                STATS.faults["reset_response"] += 1
            STATS.record(op, len(raw_head) + len(body), payload, wire, resp_payload, status)
            if cut:
                return
            if not keep or (header(lines, "connection") or "").lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError, Closed, OSError):
        return
    finally:
        if up is not None:
            up[1].close()
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="http://host:port of the S3 server")
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--port-file")
    ap.add_argument("--stats-file")
    ap.add_argument("--error-rate", type=float, default=0.0)
    ap.add_argument("--reset-rate", type=float, default=0.0)
    ap.add_argument("--latency-ms", type=int, default=0)
    args = ap.parse_args()
    FAULTS.set_error_rate(args.error_rate)
    FAULTS.set_reset_rate(args.reset_rate)
    FAULTS.latency_ms = args.latency_ms
    up = urlsplit(args.upstream)
    upstream = (up.hostname, up.port or 80)
    host, _, port = args.listen.rpartition(":")
    server = await asyncio.start_server(lambda r, w: handle(r, w, upstream), host, int(port),
                                        limit=MAX_HEAD)
    bound = server.sockets[0].getsockname()[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{bound}\n")
        import os
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"PORT {bound}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(STATS.as_dict(), f, indent=1)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
