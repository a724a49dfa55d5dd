#!/usr/bin/env python3
"""bench/tls_sink.py - a counting SMTP sink that offers STARTTLS, for the
bench's TLS runs (bench/run.py --sink-tls): what smtp-sink -c does (accept
everything, keep nothing, print a running count as "mesg=N"), plus STARTTLS
with a certificate, which smtp-sink cannot do.

    tls_sink.py --cert srv.pem --key srv.key 127.0.0.1:PORT

Standard library only (asyncio, ssl).  Its CPU is reported as the sink's,
never as a system's.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys

COUNT = 0


async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  ctx: ssl.SSLContext) -> None:
    global COUNT
    tls = False
    writer.write(b"220 sink.bench.test ESMTP\r\n")
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"LHLO"):
                ext = b"" if tls else b"250-STARTTLS\r\n"
                writer.write(b"250-sink.bench.test\r\n250-PIPELINING\r\n" + ext +
                             b"250 8BITMIME\r\n")
            elif verb == b"HELO":
                writer.write(b"250 sink.bench.test\r\n")
            elif verb == b"STAR" and not tls:
                writer.write(b"220 2.0.0 go ahead\r\n")
                await writer.drain()
                await writer.start_tls(ctx)
                tls = True
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                await reader.readuntil(b"\r\n.\r\n")
                COUNT += 1
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:  # MAIL, RCPT, RSET, NOOP
                writer.write(b"250 2.0.0 Ok\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        return
    finally:
        writer.close()


async def report() -> None:
    last = -1
    while True:
        if COUNT != last:
            last = COUNT
            sys.stdout.write(f"mesg={last}\n")
            sys.stdout.flush()
        await asyncio.sleep(0.02)


async def main(argv: list) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("listen")
    a = ap.parse_args(argv)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    host, _, port = a.listen.rpartition(":")
    server = await asyncio.start_server(lambda r, w: session(r, w, ctx), host, int(port),
                                        backlog=1024, limit=2 * 1024 * 1024)
    asyncio.ensure_future(report())
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
