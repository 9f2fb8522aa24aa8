"""Sends COUNT numbered messages with smtplib (a client nobody here wrote) to a gateway
that may be killed and restarted at any moment, for the crash-safety test.

  flood.py HOST PORT COUNT --to ADDR [--deadline SECS] [--reconnect] [--stop-file PATH]

Message n carries `Message-ID: <flood-n@client.test>` and `X-Flood-Seq: n`. After each
250 to the end of DATA it prints "accepted n" (flushed). A refused connection, a dropped
connection, a timeout or a 4xx means the message was not accepted: it is sent again on
a new connection (the client's retry, as any MTA would), until the deadline; each such
failure prints "retry n REASON". With --reconnect every message gets a connection of its
own (QUIT after each). With --stop-file, it stops early (after the message in progress)
once that file exists. Prints "done" at the end, or "gave-up n" if the deadline passed
first.
"""
import argparse
import os
import smtplib
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--to", required=True)
    p.add_argument("--deadline", type=float, default=600)
    p.add_argument("--reconnect", action="store_true")
    p.add_argument("--stop-file")
    a = p.parse_args()
    end = time.monotonic() + a.deadline
    n = 1
    conn = None
    while n <= a.count:
        if a.stop_file and os.path.exists(a.stop_file):
            break
        if time.monotonic() > end:
            print("gave-up", n, flush=True)
            return 1
        try:
            if conn is None:
                conn = smtplib.SMTP(a.host, a.port, timeout=10)
                conn.ehlo("flood.client.test")
            body = (
                f"From: flood@client.test\r\nTo: {a.to}\r\nSubject: flood {n}\r\n"
                f"Message-ID: <flood-{n}@client.test>\r\nX-Flood-Seq: {n}\r\n\r\n"
                f"message number {n}\r\n"
            ).encode()
            conn.sendmail("flood@client.test", [a.to], body)
            print("accepted", n, flush=True)
            n += 1
            if a.reconnect:
                conn.quit()
                conn = None
        except (OSError, smtplib.SMTPException) as e:
            print("retry", n, repr(e).replace("\n", " "), flush=True)
            # Not accepted: reconnect and send the same message again.
            try:
                if conn is not None:
                    conn.close()
            except Exception:
                pass
            conn = None
            time.sleep(0.05)
    try:
        conn.quit()
    except Exception:
        pass
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
