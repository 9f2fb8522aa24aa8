#!/usr/bin/env python3
"""DKIM keys and signatures by dkimpy (a signer nobody here wrote), for the auth tests.

  dkimsign.py keygen rsa|ed25519 KEYFILE [BITS]  writes the private key, prints the p= value
  dkimsign.py sign KEYFILE DOMAIN SELECTOR rsa|ed25519 CANON < message > signed
      CANON: relaxed/relaxed, simple/simple, ...; a "+l" suffix adds l= (the body length)
  dkimsign.py arc KEYFILE DOMAIN SELECTOR SRV_ID < message > sealed   (an ARC set, i=1)
"""
import base64
import subprocess
import sys

import dkim


def keygen(kind, path, bits="2048"):
    if kind == "rsa":
        subprocess.run(["openssl", "genrsa", "-out", path, bits], check=True,
                       capture_output=True)
        der = subprocess.run(["openssl", "rsa", "-in", path, "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        print(base64.b64encode(der).decode())
    else:
        import nacl.signing
        key = nacl.signing.SigningKey.generate()
        with open(path, "wb") as f:
            f.write(base64.b64encode(bytes(key)))
        print(base64.b64encode(bytes(key.verify_key)).decode())


def sign(path, domain, selector, kind, canon):
    message = sys.stdin.buffer.read()
    key = open(path, "rb").read()
    length = canon.endswith("+l")
    header, body = canon.removesuffix("+l").split("/")
    # minkey=512: the tests sign with a 512-bit key on purpose (it must not pass).
    signer = dkim.DKIM(message, minkey=512)
    sig = signer.sign(selector.encode(), domain.encode(), key,
                      canonicalize=(header.encode(), body.encode()),
                      signature_algorithm={"ed25519": b"ed25519-sha256", "rsa-sha1": b"rsa-sha1"}.get(kind, b"rsa-sha256"),
                      include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
                      length=length)
    sys.stdout.buffer.write(sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + message)


def arc(path, domain, selector, srv_id):
    """An ARC set (i=1) sealed by SRV_ID over the message on stdin (which must carry
    an Authentication-Results header of SRV_ID)."""
    message = sys.stdin.buffer.read()
    key = open(path, "rb").read()
    lines = dkim.arc_sign(message, selector.encode(), domain.encode(), key, srv_id.encode(),
                          include_headers=[b"from", b"to", b"subject"])
    sys.stdout.buffer.write(b"".join(lines).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                            + message)


if __name__ == "__main__":
    {"keygen": keygen, "sign": sign, "arc": arc}[sys.argv[1]](*sys.argv[2:])
