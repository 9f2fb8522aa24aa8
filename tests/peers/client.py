"""SMTP client actions with Python's smtplib (a client nobody here wrote), for the
integration tests. Prints one JSON object on stdout describing what happened.

  client.py send HOST PORT --from A --to B [--to C] [--data FILE] [--starttls|--ssl]
            [--helo] [--utf8] [--8bit] [--no-size] [--proxy HEX] [--source IP]
  client.py ehlo HOST PORT [--starttls]
  client.py two HOST PORT --from A --to B --big FILE --data FILE
  client.py bdat HOST PORT --from A --to B --data FILE --chunk N
"""
import argparse
import json
import smtplib
import socket
import ssl
import sys


def ctx():
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def connect(a):
    if a.proxy is not None:
        return connect_proxied(a)
    src = (a.source, 0) if a.source else None
    if a.ssl:
        s = smtplib.SMTP_SSL(a.host, a.port, context=ctx(), timeout=30, source_address=src)
    else:
        s = smtplib.SMTP(a.host, a.port, timeout=30, source_address=src)
    # --helo: say HELO, not EHLO (after STARTTLS, which itself needs EHLO first).
    greet = s.helo if a.helo else s.ehlo
    if a.starttls:
        s.ehlo("client.test")
        s.starttls(context=ctx())
    greet("client.test")
    return s


def connect_proxied(a):
    """--proxy HEX: as behind a load balancer: these octets (a PROXY protocol header the
    test wrote) go first, before the greeting and before TLS with --ssl; smtplib then
    takes over the socket. --source binds the connection to that local address."""
    src = (a.source, 0) if a.source else None
    sock = socket.create_connection((a.host, a.port), timeout=30, source_address=src)
    sock.sendall(bytes.fromhex(a.proxy))
    if a.ssl:
        sock = ctx().wrap_socket(sock, server_hostname=a.host)
    s = smtplib.SMTP(timeout=30)
    s._host = a.host
    s.sock = sock
    code, msg = s.getreply()
    if code != 220:
        raise smtplib.SMTPConnectError(code, msg)
    greet = s.helo if a.helo else s.ehlo
    if a.starttls:
        s.ehlo("client.test")
        s.starttls(context=ctx())
    greet("client.test")
    return s


def reply(code, msg):
    return {"code": code, "text": msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)}


def transaction(s, a, data, use_size=True):
    """MAIL, RCPT each, DATA; returns a dict with every reply."""
    opts = []
    if a.utf8:
        opts.append("SMTPUTF8")
    if a.eightbit:
        opts.append("BODY=8BITMIME")
    if use_size and s.has_extn("size"):
        opts.append(f"SIZE={len(data)}")
    out = {"rcpt": {}}
    code, msg = s.mail(a.sender, opts)
    out["mail"] = reply(code, msg)
    if code != 250:
        return out
    accepted = 0
    for r in a.to:
        code, msg = s.rcpt(r)
        out["rcpt"][r] = reply(code, msg)
        accepted += code in (250, 251)
    if not accepted:
        s.rset()
        return out
    code, msg = s.data(data)
    out["data"] = reply(code, msg)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("action")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--from", dest="sender", default="sender@client.test")
    p.add_argument("--to", action="append", default=[])
    p.add_argument("--data")
    p.add_argument("--big")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--ssl", action="store_true")
    p.add_argument("--proxy", help="hex octets sent first (a PROXY protocol header)")
    p.add_argument("--source", help="local address to connect from (127.x.y.z)")
    p.add_argument("--helo", action="store_true")
    p.add_argument("--utf8", action="store_true")
    p.add_argument("--8bit", dest="eightbit", action="store_true")
    p.add_argument("--no-size", action="store_true")
    p.add_argument("--chunk", type=int, default=0)
    a = p.parse_args()
    data = open(a.data, "rb").read() if a.data else b"Subject: test\r\n\r\nhello\r\n"
    result = {}
    try:
        s = connect(a)
        if a.action == "ehlo":
            result["features"] = sorted(k.upper() for k in s.esmtp_features)
            result["size"] = s.esmtp_features.get("size", "")
            result["tls"] = isinstance(s.sock, ssl.SSLSocket)
        elif a.action == "send":
            result = transaction(s, a, data, use_size=not a.no_size)
            result["tls"] = isinstance(s.sock, ssl.SSLSocket)
        elif a.action == "two":
            big = open(a.big, "rb").read()
            result["first"] = transaction(s, a, big, use_size=False)
            result["second"] = transaction(s, a, data)
        elif a.action == "bdat":
            # smtplib has no BDAT: speak it on the socket smtplib opened and negotiated.
            s.mail(a.sender)
            for r in a.to:
                s.rcpt(r)
            sock = s.sock
            f = sock.makefile("rb")
            replies = []
            chunks = [data[i:i + a.chunk] for i in range(0, len(data), a.chunk)] or [b""]
            for i, c in enumerate(chunks):
                last = " LAST" if i == len(chunks) - 1 else ""
                sock.sendall(f"BDAT {len(c)}{last}\r\n".encode() + c)
                replies.append(f.readline().decode().rstrip("\r\n"))
            result["replies"] = replies
        s.quit()
    except smtplib.SMTPException as e:
        result["error"] = repr(e)
    except OSError as e:
        result["oserror"] = repr(e)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
