"""The chaos suite's destination: an SMTP server that records every message it
accepts, and can be told to refuse for a while (tests/chaos/chaos.py).

  python3 sink.py --port P --log FILE --control FILE

For every transaction it answers 250 to, it first appends one line to --log:

  <run>-<seq>-<attempt> <digest> <unix time> <qid>

taken from the message's `X-Chaos-Id: <run>-<seq>-<attempt>` field; digest is
the first 32 hex digits of SHA-256 of the body (everything after the blank
line ending the header section, dot-unstuffed, CRLF line ends), so the driver
can tell a message arrived intact; qid is the queue id the frontend gave it,
from its Received field (`by HOST (Mailstream) with ESMTP id QID`), "-" if
none, so a duplicate can be matched with the workers' duplicate_risk lines.
A line is written (and flushed to the OS, no fsync: the file is the
driver's, not a mail store) before the 250 is sent: a message the worker
saw accepted is always on record, and a record that appears twice is a
duplicate delivery. The reply to the end of data goes out as soon as the
line is written, so the destination's share of the window in which a
worker killed after its "." leaves a duplicate behind is as small as this
process can make it (docs/reliability.md, "The one duplicate left").

--control holds one word, re-read every 0.2 s:
  ok    accept everything (also when the file is absent or empty)
  421   greet new connections with `421 4.3.2` and close; open sessions get
        421 at their next command (RFC 5321 §3.8: the server is going away)
  451   accept everything up to the end of the data, then answer `451 4.3.0`
        (the worker sent the whole message and must try again later)

Standard library only (asyncio); one process, so it costs a core only when
mail flows. Extensions offered: PIPELINING, 8BITMIME, SIZE (no CHUNKING, no
STARTTLS: the worker's default TLS policy delivers in clear to a relay that
does not offer it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import signal
import sys
import time

ID_RE = re.compile(rb"^X-Chaos-Id:\s*(\S+)\r?$", re.M | re.I)
# The frontend's Received field (frontend/fe_session.c, add_received).
QID_RE = re.compile(rb"\(Mailstream\) with [A-Z]+ id ([0-9A-Za-z]+)")
STUFFED = re.compile(rb"\r\n\.\.")
MAX_LINE = 64 << 20   # readuntil buffer: the largest message taken


class State:
    def __init__(self, log_path: str, control: str):
        self.log = open(log_path, "a", buffering=1)
        self.control = control
        self.mode = "ok"

    async def watch(self) -> None:
        while True:
            try:
                with open(self.control) as f:
                    word = f.read().strip()
            except OSError:
                word = ""
            self.mode = word if word in ("421", "451") else "ok"
            await asyncio.sleep(0.2)

    def record(self, data: bytes) -> None:
        head, sep, body = data.partition(b"\r\n\r\n")
        m = ID_RE.search(head)
        ident = m.group(1).decode("ascii", "replace") if m else "-"
        q = QID_RE.search(head)
        qid = q.group(1).decode("ascii") if q else "-"
        digest = hashlib.sha256(body if sep else b"").hexdigest()[:32]
        self.log.write(f"{ident} {digest} {time.time():.3f} {qid}\n")
        self.log.flush()


async def session(st: State, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    def send(text: str) -> None:
        writer.write(text.encode("ascii"))

    try:
        if st.mode == "421":
            send("421 4.3.2 chaos-sink: service not available, closing\r\n")
            await writer.drain()
            return
        send("220 chaos-sink.mailstream.test ESMTP\r\n")
        while True:
            await writer.drain()
            line = await reader.readline()
            if not line:
                return
            if st.mode == "421":
                send("421 4.3.2 chaos-sink: service not available, closing\r\n")
                await writer.drain()
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                send("250-chaos-sink.mailstream.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                     "250 SIZE 52428800\r\n")
            elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                send("250 2.0.0 ok\r\n")
            elif verb == b"QUIT":
                send("221 2.0.0 bye\r\n")
                await writer.drain()
                return
            elif verb == b"DATA":
                send("354 go ahead\r\n")
                await writer.drain()
                # The whole message up to "<CRLF>.<CRLF>" in one read, not
                # line by line: this process's latency is part of what is
                # measured. A lost connection mid-data: nothing accepted.
                first = await reader.readline()
                if not first:
                    return
                if first == b".\r\n":
                    data = b""
                else:
                    try:
                        rest = await reader.readuntil(b"\r\n.\r\n")
                    except asyncio.IncompleteReadError:
                        return
                    data = first + rest[:-3]
                    # RFC 5321 §4.5.2: a leading "." of a line was doubled.
                    if data.startswith(b".."):
                        data = data[1:]
                    data = STUFFED.sub(b"\r\n.", data)
                if st.mode == "451":
                    send("451 4.3.0 chaos-sink: try again later\r\n")
                elif st.mode == "421":
                    send("421 4.3.2 chaos-sink: service not available, closing\r\n")
                    await writer.drain()
                    return
                else:
                    st.record(data)
                    send("250 2.0.0 ok: queued\r\n")
            else:
                send("502 5.5.2 not implemented\r\n")
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        return
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> None:
    st = State(args.log, args.control)
    server = await asyncio.start_server(lambda r, w: session(st, r, w), args.host, args.port,
                                        limit=MAX_LINE, backlog=512)
    watcher = asyncio.ensure_future(st.watch())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    watcher.cancel()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--control", required=True)
    asyncio.run(main_async(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
