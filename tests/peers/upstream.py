"""A real SMTP server (aiosmtpd) used as mailgate's upstream in integration tests.

Binds 127.0.0.1:0, prints "port N" on stdout once listening (the readiness signal), and
stores each accepted message as <dir>/<n>.eml (exact bytes received) plus <n>.json
(envelope, whether the session used TLS), then prints "stored n".

  upstream.py DIR [--port N] [--reject ADDR]... [--tempfail] [--tempfail-first N] [--starttls]
              [--odd-reply ADDR=REPLY]...

--port binds a given port (to come back on the same address after being stopped);
--tempfail-first N answers the first N DATA commands with 451, then accepts;
--odd-reply answers RCPT TO:<ADDR> with REPLY (e.g. "354 go ahead": a broken server).
"""
import argparse
import asyncio
import json
import os
import subprocess
import ssl
import sys

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, args):
        self.args = args
        self.count = 0
        self.tempfailed = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.args.reject:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        for odd in self.args.odd_reply:
            addr, _, reply = odd.partition("=")
            if address == addr:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.args.tempfail or self.tempfailed < self.args.tempfail_first:
            self.tempfailed += 1
            return "451 4.3.0 Upstream says try again later"
        self.count += 1
        base = os.path.join(self.args.dir, str(self.count))
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "tls": session.ssl is not None,
        }
        with open(base + ".json", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        print("stored", self.count, flush=True)
        return "250 2.0.0 Ok: queued upstream"


def tls_context(directory):
    cert, key = os.path.join(directory, "up-cert.pem"), os.path.join(directory, "up-key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=upstream.test"],
        check=True, capture_output=True,
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--reject", action="append", default=[])
    p.add_argument("--tempfail", action="store_true")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tempfail-first", type=int, default=0)
    p.add_argument("--odd-reply", action="append", default=[])
    args = p.parse_args()
    handler = Handler(args)
    ctx = tls_context(args.dir) if args.starttls else None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="upstream.test", decode_data=False,
                     enable_SMTPUTF8=True, tls_context=ctx, require_starttls=False),
        "127.0.0.1", args.port, reuse_address=True,
    )
    print("port", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
