#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets to fuzz/corpus/<target>/seed-*, and
the reproducers of fixed failures to fuzz/corpus/<target>/regression-*.

The input layouts are described at the top of each fuzz_targets/<target>.rs. Run from
anywhere: python3 fuzz/seeds.py (existing seeds are overwritten, other files kept).
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEP = b"\xff"


def write(target, name, data, prefix="seed-"):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, prefix + name), "wb") as f:
        f.write(data)


# ---- session: 13-octet header, chunk lengths, client stream ----

STARTTLS, TRUSTED, CASE, SMTPS, REFUSE_CONNECT, NO_LOCAL, FAIL_DELIVERY = 1, 2, 4, 8, 16, 32, 64


def session(name, stream, flags=0, a=0, b=0, answers=0, disconnect_at=0, chunks=()):
    assert len(chunks) <= 15 and all(1 <= c <= 256 for c in chunks)
    head = bytes([flags, a, b]) + struct.pack("<Q", answers) + bytes([disconnect_at, len(chunks)])
    write("session", name, head + bytes(c - 1 for c in chunks) + stream)


def answers(*codes):
    """Hook answers for hooks 1, 2, ... after Connect: 0 continue, 2 refuse, 3 accept."""
    v = 0
    for i, c in enumerate(codes, start=1):
        v |= c << (2 * (i % 32))
    return v


EHLO = b"EHLO client.test\r\n"
TXN = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<u@example.test>\r\n"
MSG = b"From: a@sender.test\r\nSubject: hi\r\n\r\nHello.\r\n..leading dot\r\n"

session("data", EHLO + TXN + b"DATA\r\n" + MSG + b".\r\nQUIT\r\n")
session("data-lines", EHLO + TXN + b"DATA\r\n" + MSG + b".\r\nQUIT\r\n", chunks=[18, 7, 1, 30, 2, 1])
LOCKSTEP = [b"HELO client.test\r\n", TXN[:27], TXN[27:], b"DATA\r\n", MSG + b".\r\n", b"QUIT\r\n"]
session("helo-lockstep", b"".join(LOCKSTEP), chunks=[len(p) for p in LOCKSTEP])
session("helo-pipelined", b"HELO client.test\r\nMAIL FROM:<a@sender.test>\r\nNOOP\r\n")
session(
    "bdat",
    EHLO + TXN + b"BDAT 14\r\nSubject: x\r\n\r\nBDAT 8 LAST\r\nbody\r\n\r\n" + TXN
    + b"BDAT 0 LAST\r\nQUIT\r\n",
)
session(
    "bdat-split-crlf",
    EHLO + TXN + b"BDAT 5\r\nab\r\nxBDAT 3 LAST\r\n\ncd\r\nQUIT\r\n",
    chunks=[1, 2, 3],
)
session("bdat-bad-size", EHLO + TXN + b"BDAT 12x\r\nhello\r\nQUIT\r\n")
session("bdat-then-data", EHLO + TXN + b"BDAT 3\r\nabcDATA\r\nBDAT 0 LAST\r\n")
session(
    "starttls-pipelined",
    EHLO + b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<u@example.test>\r\n"
    + EHLO + TXN + b"DATA\r\nx\r\n.\r\n",
    flags=STARTTLS,
    chunks=[18, 10, 60, 18, 200],
)
session("starttls-twice", EHLO + b"STARTTLS\r\n" + EHLO + b"STARTTLS\r\nQUIT\r\n", flags=STARTTLS, chunks=[28, 18])
session("smtps", EHLO + b"STARTTLS\r\n" + TXN + b"DATA\r\nx\r\n.\r\n", flags=SMTPS | STARTTLS)
for name, payload in [
    ("smuggle-lf-dot-lf", b"\n.\n"),
    ("smuggle-crlf-dot-lf", b"\r\n.\n"),
    ("smuggle-lf-dot-crlf", b"\n.\r\n"),
    ("smuggle-cr-dot-cr", b"\r.\r"),
]:
    session(
        name,
        EHLO + TXN + b"DATA\r\nSubject: a\r\n\r\nx" + payload
        + b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@example.test>\r\nDATA\r\nevil\r\n.\r\n.\r\nQUIT\r\n",
    )
session(
    "smuggle-bdat",
    EHLO + TXN + b"BDAT 10 LAST\r\nab\n.\nMAIL\r\n" + TXN + b"BDAT 4 LAST\r\nab\rQUIT\r\n",
)
session(
    "long-lines",
    EHLO + TXN + b"DATA\r\n" + b"x" * 90 + b"\r\nshort\r\n.\r\n" + b"NOOP " + b"y" * 60 + b"\r\nQUIT\r\n",
    a=0b00_01_01_01,  # command line 80, text line 78, 2000 octets
)
session(
    "too-big",
    EHLO + TXN + b"DATA\r\n" + b"0123456789\r\n" * 12 + b".\r\n" + TXN + b"BDAT 200 LAST\r\n" + b"z" * 200
    + b"QUIT\r\n",
    a=0b00_10_00_00,  # 100 octets
    chunks=[7, 50, 3],
)
session(
    "hops",
    EHLO + TXN + b"DATA\r\nReceived: a\r\nreceived: b\r\nX: y\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    b=0b00_01_00_00,  # one Received: allowed
)
session(
    "recipients",
    EHLO + b"MAIL FROM:<a@sender.test> SIZE=100 BODY=8BITMIME\r\n"
    + b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(5))
    + b"RCPT TO:<U0@Example.TEST.>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<x@elsewhere.test>\r\n"
    + b"RCPT TO:<@r.test:u@example.test>\r\nRCPT TO:<u%v@example.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
    b=0b00_00_01_01,  # 3 recipients, overshoot 2
)
session(
    "relay-utf8",
    EHLO + "MAIL FROM:<jösé@bücher.test> SMTPUTF8\r\nRCPT TO:<\"a b\"@[192.0.2.1]>\r\n"
    "RCPT TO:<ü@xn--bcher-kva.test>\r\nRCPT TO:<v@[IPv6:2001:db8::1]>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n".encode(),
    flags=TRUSTED,
)
session(
    "hooks-refuse",
    EHLO + TXN + b"RCPT TO:<v@example.test>\r\nDATA\r\nx\r\n.\r\n" + TXN + b"DATA\r\ny\r\n.\r\nQUIT\r\n",
    answers=answers(0, 0, 2, 3, 0, 0, 0, 2),
)
session("hook-disconnect", EHLO + TXN + b"DATA\r\nx\r\n.\r\n", disconnect_at=3)
session("connect-refused", EHLO, flags=REFUSE_CONNECT)
session(
    "deliveries-fail",
    EHLO + (TXN + b"DATA\r\nm\r\n.\r\n") * 3 + b"QUIT\r\n",
    flags=FAIL_DELIVERY,
)
session(
    "errors",
    b"FOO\r\nEHLO\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\nRSET x\r\n"
    b"VRFY\r\nHELP\r\nEXPN x\r\nbare\nNUL\x00\r\n\xc3\x28\r\nEHLO c\r\nMAIL FROM:<a@b.test> FOO=1\r\n"
    b"MAIL FROM:<postmaster>\r\nRCPT TO:<>\r\nQUIT x\r\nQUIT\r\n",
    a=0b01_00_00_00,  # 5 errors
)
session("eof-in-data", EHLO + TXN + b"DATA\r\nunterminated", chunks=[5])
session("eof-in-bdat", EHLO + TXN + b"BDAT 100\r\nshort")
# Fixed in db6b231: 552 (size) when the 88-octet line arrived whole, 554 (line length) in pieces.
write(
    "session",
    "size-verdict-depends-on-chunking",
    bytes([0, 0x24, 0]) + struct.pack("<Q", 0) + bytes([0, 0])
    + b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n"
    + b"x" * 88 + b"\r\n" + b"y" * 9 + b"\r\n.\r\nQUIT\r\n",
    prefix="regression-",
)


# ---- command: one command line (or path) as text ----

for i, line in enumerate(
    [
        "EHLO client.test",
        "HELO [192.0.2.1]",
        "MAIL FROM:<a.b+tag@Example.TEST.> SIZE=100 BODY=8BITMIME SMTPUTF8",
        "MAIL FROM:<>",
        "MAIL FROM: <\"john \\\"q\\\" doe\"@example.test> BODY=7BIT",
        "RCPT TO:<Postmaster>",
        "RCPT TO:<@r1.test,@r2.test:u@example.test>",
        "RCPT TO:<u@[IPv6:2001:db8::1]>",
        "RCPT TO:<u@[192.0.2.1]>",
        "RCPT TO:<jösé@bücher.example>",
        "RCPT TO:<u%evil.test@example.test>",
        "RCPT TO:<\"a>b\"@c.test> NOTIFY=NEVER",
        "BDAT 1000 LAST",
        "BDAT 00000000000000000001",
        "DATA",
        "NOOP anything",
        "VRFY postmaster",
        "STARTTLS",
        "rset",
        "AUTH PLAIN x",
        "<a@b.test> SIZE=1",
    ]
):
    write("command", "%02d" % i, line.encode())


# ---- reply: 8 octets (code, enhanced code), then text ----


def reply(name, text, code=None, enhanced=None, raw_code=None, mode=0):
    if raw_code is not None:
        head = bytes([0, raw_code & 0xFF, raw_code >> 8])
    else:
        v = code - 200
        head = bytes([0x80, v & 0xFF, v >> 8])
    if enhanced is None:
        head += bytes([1 | mode]) + b"\0\0\0\0"
    elif enhanced == "parse":
        head += bytes([2 | mode]) + b"\0\0\0\0"
    else:
        c, s, d = enhanced
        head += bytes([0 | mode, c]) + struct.pack("<H", s) + bytes([d])
    write("reply", name, head + text)


reply("state-line", b"550 5.1.1 <u@example.test>: no such user", code=550, enhanced="parse")
reply("old-state-line", b"4.4.1 mx.test:25: connection refused", code=451, enhanced=(4, 4, 1))
reply("injection", b"no\r\n250 ok\xff\x00\x1b[31mred\xff\xc2\x85next", code=550, enhanced=(2, 1, 0))
reply("multiline", b"first\xffsecond\xff\xff" + "ünïcödé".encode() * 80, code=250, enhanced=(2, 0, 0))
reply("bad-code", b"250 ok", raw_code=999)
reply("no-lines", b"", code=421, mode=4)
# Fixed in 3dfdb67: a 3xx reply got the enhanced code 3.0.0.
write("reply", "sanitized-354-gets-enhanced-3.0.0", b"\x80\x9a\x00\x01\x00\x00\x00\x00go", prefix="regression-")


# ---- received: 25 octets (flags, client address, time), then 0xFF-separated fields ----

HELO_, EHLO_, PTR, TLS, V6, UTF8, RCPT, BEFORE = 1, 2, 4, 8, 16, 32, 64, 128


def received(name, flags, ip, secs, helo="", ptr="", ver="", cipher="", host="", id_="", rcpt=""):
    ip = ip.ljust(16, b"\0")
    head = bytes([flags]) + ip + struct.pack("<Q", secs)
    fields = [helo, ptr, ver, cipher, host, id_, rcpt]
    write("received", name, head + SEP.join(f.encode() for f in fields))


received(
    "tls-rcpt", HELO_ | EHLO_ | TLS | RCPT, bytes([192, 0, 2, 1]), 1_795_417_200, helo="helo.name",
    ver="TLSv1_3", cipher="TLS13_AES_256_GCM_SHA384", host="mx.example.test", id_="abc.1",
    rcpt="user@example.test",
)
received(
    "inject", HELO_ | PTR | V6 | RCPT, bytes(range(16)), 0,
    helo="evil.example) by trusted.example\r\nX-Injected: yes (\\;", ptr="evil) (x;y" + "p" * 80,
    host="m" * 70, id_="id;(x)", rcpt="a>\r\nBcc: x@y; (c)" + "r" * 600,
)
received("utf8-before-epoch", HELO_ | EHLO_ | UTF8 | BEFORE, bytes([10, 0, 0, 1]), 10, helo="bücher.test")
received("far-future", 0, bytes([0, 0, 0, 0]), 2**64 - 1, host="")


# ---- dsn: 26 octets, 17 per recipient, then 0xFF-separated fields, then the original ----

D_DELAYED, D_MTA, D_DIAG, D_LAST, D_UNTIL = 1, 2, 4, 8, 16


def dsn(name, recipients, original, mta="mx.example.test", sender="alice@origin.test", qid="Q1.2",
        seed=0xDEADBEEF, arrival=1_795_417_200, now=1_795_420_800):
    head = struct.pack("<QQQ", seed, arrival, now) + bytes([0, len(recipients)])
    texts = [mta, sender, qid]
    for flags, addr, status, rmta, diag in recipients:
        head += bytes([flags]) + struct.pack("<QQ", 1_795_417_300, 1_795_800_000)
        texts += [addr, status, rmta, diag]
    body = SEP.join(t.encode() for t in texts) + SEP + original
    write("dsn", name, head + body)


ORIGINAL = (
    b"From: Alice <alice@origin.test>\r\nTo: bob@dest.test\r\nSubject: Lunch\r\n"
    b"Message-ID: <orig.1@origin.test>\r\n\r\nSECRET BODY LINE\r\n"
)
dsn(
    "failed-and-delayed",
    [
        (D_MTA | D_DIAG | D_LAST, "bob@dest.test", "5.1.1", "mx.dest.test", "550 5.1.1 <bob@dest.test>: User unknown"),
        (D_DELAYED | D_LAST | D_UNTIL, "carol@dest.test", "4.4.1", "", ""),
    ],
    ORIGINAL,
)
dsn(
    "utf8-and-junk",
    [
        (D_MTA | D_DIAG, "jösé@bücher.test", "5.7", "[192.0.2.1] evil\r\nX: y", "line1\nline2\r\n" + "w" * 1200),
        (D_DIAG, "<x>\r\nBcc: y", "9.9.9", "", "\x00\x01" + "ü" * 600),
    ],
    b"Subject: caf\xc3\xa9\r\n\tcontinued\rbare CR\r\n" + b"X-Long: " + b"y" * 1200 + b"\r\nnot a header\r\nbody\r\n",
    sender="jösé@bücher.test",
)
dsn("boundary-clash", [(0, "a@b.test", "5.0.0", "", "")], b"X: --=_mailgate_00000000deadbeef0\r\n--=_mailgate_00000000deadbeef\r\n\r\n")
dsn("no-recipients-no-header", [], b"just a body line\r\n")
