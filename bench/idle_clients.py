#!/usr/bin/env python3
"""Hold many logged-in, idle client connections open against a pooler and measure its memory.

Each connection speaks just enough of the PostgreSQL protocol (v3 startup, SCRAM-SHA-256 or
cleartext/trust, wait for ReadyForQuery) to count as a real client, then stays silent. The
pooler's resident set size is sampled from /proc before the first connection and once all are
open; the difference divided by the number of open connections is the memory per idle client.
A sample of connections then runs `SELECT 1` to show they were usable, and all are closed.

Only the standard library is used so that the benchmark runs on a bare Debian machine.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import resource
import struct
import sys
import time

PROTOCOL_V3 = 196608


class LoginError(Exception):
    """The pooler refused or broke off a login."""


def rss_kib(pid):
    """Resident set size of a process in KiB, read from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def startup_message(user, database):
    """The v3 StartupMessage: length, protocol version, then NUL-terminated key/value pairs."""
    body = struct.pack("!i", PROTOCOL_V3)
    for key, value in (("user", user), ("database", database), ("application_name", "idle")):
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def message(kind, body):
    """A typed frontend message: one type byte, then a length that counts itself."""
    return kind + struct.pack("!i", len(body) + 4) + body


class Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677) without channel binding.

    The salted password depends only on the password, salt and iteration count, so it is
    cached: both poolers store one verifier, and 10,000 logins then cost one PBKDF2, which
    keeps the measurement about the pooler rather than about this script.
    """

    _salted = {}

    def __init__(self, password):
        self.password = password.encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = None

    def client_first(self):
        return ("n,," + self.first_bare).encode()

    def client_final(self, server_first):
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.nonce):
            raise LoginError("server nonce does not extend the client nonce")
        key = (self.password, salt, iterations)
        salted = Scram._salted.get(key)
        if salted is None:
            salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
            Scram._salted[key] = salted
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_signature = hmac.new(server_key, auth_message, "sha256").digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def check_final(self, server_final):
        attrs = dict(part.split("=", 1) for part in server_final.split(","))
        if base64.b64decode(attrs.get("v", "")) != self.server_signature:
            raise LoginError("server signature does not match")


async def read_message(reader):
    """One backend message as (type byte, body)."""
    header = await reader.readexactly(5)
    kind, length = header[:1], struct.unpack("!i", header[1:])[0]
    return kind, await reader.readexactly(length - 4)


def error_text(body):
    """The human part (field M) of an ErrorResponse body."""
    for field in body.split(b"\0"):
        if field[:1] == b"M":
            return field[1:].decode(errors="replace")
    return body.decode(errors="replace")


async def login(args):
    """Open one connection and log in; returns the (reader, writer) pair once it is idle."""
    reader, writer = await asyncio.open_connection(args.host, args.port)
    try:
        writer.write(startup_message(args.user, args.dbname))
        scram = None
        while True:
            kind, body = await read_message(reader)
            if kind == b"R":
                code = struct.unpack("!i", body[:4])[0]
                if code == 0:
                    continue
                if code == 3:
                    writer.write(message(b"p", args.password.encode() + b"\0"))
                elif code == 10:
                    if b"SCRAM-SHA-256\0" not in body[4:]:
                        raise LoginError("server offers no SCRAM-SHA-256")
                    scram = Scram(args.password)
                    first = scram.client_first()
                    writer.write(
                        message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)
                    )
                elif code == 11 and scram is not None:
                    writer.write(message(b"p", scram.client_final(body[4:].decode())))
                elif code == 12 and scram is not None:
                    scram.check_final(body[4:].decode())
                else:
                    raise LoginError(f"unsupported authentication request {code}")
                await writer.drain()
            elif kind == b"E":
                raise LoginError(error_text(body))
            elif kind == b"Z":
                return reader, writer
    except BaseException:
        writer.close()
        raise


async def select_one(reader, writer):
    """Run `SELECT 1` on an open connection; True when it answers 1 and is ready again."""
    writer.write(message(b"Q", b"SELECT 1\0"))
    await writer.drain()
    value = None
    while True:
        kind, body = await read_message(reader)
        if kind == b"D":
            length = struct.unpack("!i", body[2:6])[0]
            value = body[6 : 6 + length]
        elif kind == b"E":
            return False
        elif kind == b"Z":
            return value == b"1"


async def run(args):
    """Open, hold, measure, probe and close; returns the result record."""
    baseline = rss_kib(args.pid)
    gate = asyncio.Semaphore(args.concurrency)
    errors = {}

    async def one():
        async with gate:
            try:
                return await asyncio.wait_for(login(args), args.login_timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, LoginError) as e:
                text = f"{type(e).__name__}: {e}"
                errors[text] = errors.get(text, 0) + 1
                return None

    started = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(args.count)))
    connect_seconds = time.monotonic() - started
    conns = [c for c in results if c is not None]

    # Let the pooler finish any work a login triggered before memory is read.
    await asyncio.sleep(args.settle)
    held = rss_kib(args.pid)
    probes = random.sample(conns, min(args.probe, len(conns)))
    answers = await asyncio.gather(*(select_one(r, w) for r, w in probes), return_exceptions=True)
    probe_ok = sum(1 for a in answers if a is True)

    for _, writer in conns:
        try:
            writer.write(message(b"X", b""))
            writer.close()
        except OSError:
            pass
    await asyncio.sleep(0.5)

    opened = len(conns)
    return {
        "requested": args.count,
        "opened": opened,
        "failed": args.count - opened,
        "errors": errors,
        "connect_seconds": round(connect_seconds, 2),
        "rss_before_kib": baseline,
        "rss_held_kib": held,
        "bytes_per_client": round((held - baseline) * 1024 / opened) if opened else None,
        "probe_ok": probe_ok,
        "probe_total": len(probes),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--password", default=os.environ.get("PGPASSWORD", ""))
    parser.add_argument("--pid", type=int, required=True, help="pooler process to measure")
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=100, help="logins in flight at once")
    parser.add_argument("--login-timeout", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading RSS")
    parser.add_argument("--probe", type=int, default=100, help="held connections that run SELECT 1")
    parser.add_argument("--out", help="write the JSON result here as well as to stdout")
    args = parser.parse_args()

    # Every held connection is a file descriptor in this process too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.count + 64:
        sys.exit(f"idle_clients: open-file limit {hard} is too low for {args.count} connections")

    result = asyncio.run(run(args))
    text = json.dumps(result, sort_keys=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
