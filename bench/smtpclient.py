"""A small asyncio SMTP client for the benchmark.

probe(): a few sessions sending messages back to back, each transaction
timestamped: the latency is from the moment the terminating "<CRLF>.<CRLF>"
is handed to the kernel (the rest of the message already written and
flushed) to the moment the complete reply arrives. It runs alongside
smtp-source, so it measures latency under that load.

hold_idle(): open many connections, read the greeting, send EHLO, read the
reply, and keep them open (the connection-scale test).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple


def share_out(sessions: int, messages: int, k: int) -> List[Tuple[int, int]]:
    """A load of `sessions` sessions and `messages` messages split over at
    most `k` smtp-source processes: (sessions, messages) for each, the
    messages in proportion to the sessions, none empty."""
    k = max(1, min(k, sessions))
    sess = [sessions // k + (1 if i < sessions % k else 0) for i in range(k)]
    msgs = [messages * s // sessions for s in sess]
    msgs[0] += messages - sum(msgs)
    return [(max(1, s), m) for s, m in zip(sess, msgs) if m > 0]


def make_message(size: int, n: int, tag: str) -> bytes:
    """Headers plus `size` bytes of body in 78-character lines (CRLF), dot-stuffed
    (the body never starts a line with '.') and terminated by CRLF."""
    head = (f"From: <bench-probe@example.org>\r\n"
            f"To: <probe@mailstream.test>\r\n"
            f"Subject: bench probe {tag} {n}\r\n"
            f"Message-ID: <probe-{tag}-{n}@example.org>\r\n\r\n").encode()
    line = b"X" * 78 + b"\r\n"
    body = line * (size // len(line))
    rest = size - len(body)
    if rest >= 2:
        body += b"X" * (rest - 2) + b"\r\n"
    return head + body


async def _reply(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError(f"connection closed after {out!r}")
        out += line
        if len(line) < 4 or line[3:4] != b"-":
            return out


@dataclass
class ProbeResult:
    latencies: List[float] = field(default_factory=list)   # seconds, successful only
    sent: int = 0        # 250 replies to end of DATA
    failed: int = 0      # other replies (451 ...)
    errors: List[str] = field(default_factory=list)
    first_start: Optional[float] = None   # time.time() of first connect
    last_accept: Optional[float] = None   # time.time() of last 250


async def _probe_session(host: str, port: int, size: int, stop: asyncio.Event, res: ProbeResult,
                         idx: int, sender: str, rcpt: str, max_msgs: Optional[int],
                         message: Optional[bytes] = None, helo: str = "probe.example.org") -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        res.errors.append(f"connect: {e}")
        return
    writer.transport.set_write_buffer_limits(high=0)
    try:
        if not (await _reply(reader)).startswith(b"220"):
            res.errors.append("no 220 greeting")
            return
        writer.write(f"EHLO {helo}\r\n".encode())
        await _reply(reader)
        n = 0
        while not stop.is_set() and (max_msgs is None or n < max_msgs):
            n += 1
            msg = message if message is not None else make_message(size, n, f"s{idx}")
            for cmd, want in ((f"MAIL FROM:<{sender}>", b"250"), (f"RCPT TO:<{rcpt}>", b"250"),
                              ("DATA", b"354")):
                writer.write(cmd.encode() + b"\r\n")
                r = await _reply(reader)
                if not r.startswith(want):
                    raise RuntimeError(f"{cmd}: {r!r}")
            writer.write(msg)
            await writer.drain()
            writer.write(b".\r\n")
            t0 = time.perf_counter()
            r = await _reply(reader)
            t1 = time.perf_counter()
            if r.startswith(b"250"):
                res.sent += 1
                res.latencies.append(t1 - t0)
                res.last_accept = time.time()
            else:
                res.failed += 1
                res.errors.append(f"end of DATA: {r[:80]!r}")
        writer.write(b"QUIT\r\n")
        try:
            await asyncio.wait_for(_reply(reader), 10)
        except (asyncio.TimeoutError, ConnectionError):
            pass
    except (OSError, ConnectionError, RuntimeError) as e:
        res.errors.append(str(e)[:200])
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def probe(host: str, port: int, size: int, sessions: int, stop: asyncio.Event,
                sender: str = "bench-probe@example.org", rcpt: str = "probe@mailstream.test",
                max_msgs: Optional[int] = None, message: Optional[bytes] = None,
                helo: str = "probe.example.org") -> ProbeResult:
    """message: sent as it is every time (dot-stuffed, ending in CRLF; the
    inbound workload's DKIM-signed mail) instead of make_message's."""
    res = ProbeResult(first_start=time.time())
    await asyncio.gather(*(_probe_session(host, port, size, stop, res, i, sender, rcpt, max_msgs,
                                          message, helo)
                           for i in range(sessions)))
    return res


def percentile(values: List[float], p: float) -> Optional[float]:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


@dataclass
class IdleResult:
    wanted: int
    connected: int = 0
    greeted: int = 0
    ehlo_ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    writers: list = field(default_factory=list)


async def hold_idle(host: str, port: int, n: int, deadline_s: float = 60.0,
                    parallel_connects: int = 200) -> IdleResult:
    """Open n connections; each reads the greeting, sends EHLO and reads its reply.
    Returns after all finished or deadline_s passed; the connections stay open
    (close them with close_idle)."""
    res = IdleResult(wanted=n)
    sem = asyncio.Semaphore(parallel_connects)
    t_start = time.monotonic()

    async def one(i: int) -> None:
        async with sem:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except (OSError, asyncio.TimeoutError):
                res.errors += 1
                return
        res.connected += 1
        res.writers.append(writer)
        try:
            if (await _reply(reader)).startswith(b"220"):
                res.greeted += 1
                writer.write(f"EHLO idle{i}.example.org\r\n".encode())
                if (await _reply(reader)).startswith(b"250"):
                    res.ehlo_ok += 1
        except (OSError, ConnectionError):
            res.errors += 1

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    res.seconds = time.monotonic() - t_start
    return res


async def close_idle(res: IdleResult) -> None:
    for w in res.writers:
        try:
            w.close()
        except Exception:  # noqa: BLE001
            pass
    await asyncio.sleep(0.5)
    res.writers.clear()


def idle_connections(host: str, port: int, n: int, measure, deadline_s: float = 60.0,
                     settle_s: float = 2.0) -> Tuple[IdleResult, object]:
    """Open n idle connections, wait settle_s, call measure() while they are
    open, close them; returns (IdleResult, measure())."""
    async def main():
        res = await hold_idle(host, port, n, deadline_s)
        await asyncio.sleep(settle_s)
        m = measure()
        await close_idle(res)
        return res, m
    return asyncio.run(main())
