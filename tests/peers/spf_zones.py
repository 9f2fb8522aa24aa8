#!/usr/bin/env python3
"""Turns the RFC 7208 SPF test suite (tests/fixtures/spf/rfc7208-tests.yml, one YAML
document per scenario) into zone files for NSD, printed as JSON on stdout:

    [{"description": ..., "zones": [[origin, zone file text], ...], "servfail": [name, ...],
      "notes": [...], "tests": [{"name", "spec", "helo", "host", "mailfrom",
                                  "result": [acceptable, ...], "explanation"?}, ...]}, ...]

The records mean what pyspf's reference driver (test/testspf.py, next to the suite) makes of
them:

- `SPF` records are served as type SPF (99) and, when the name has no `TXT` record at all,
  also as TXT: the suite's header says "other sections rely on auto-magic duplication of SPF
  to TXT records (by test suite drivers)"; only "Selecting records" (names with both kinds)
  checks that type SPF itself is ignored. `TXT: NONE` means "no TXT record" (and no
  duplication); `SPF: NONE` means no record.
- `TIMEOUT` on a name: a query of a type that has no record listed before it times out. A
  name whose TXT query times out becomes its own zone that NSD cannot load (its file has no
  SOA), so every query for it is answered SERVFAIL; its other records are dropped. A name
  whose TXT query answers keeps its records (only types nobody asks for would time out).
- A name absent from the data does not exist: the root zone is served too, so any name
  outside the test zones is NXDOMAIN rather than REFUSED. (Under a SERVFAIL name, absent
  names are SERVFAIL too; served names there get zones of their own.)

Zones: one per last two labels of the owner names (`in-addr.arpa` and `ip6.arpa` for reverse
names), one per SERVFAIL name, one per child of a SERVFAIL name with served names below it,
and the root. Names NSD cannot serve (a label over 63 octets, an empty label) are skipped and
noted; text is encoded as UTF-8, like the reference driver does, in character-strings of at
most 255 octets with `\\"`, `\\\\` and `\\DDD` escapes.
"""

import ipaddress
import json
import sys

import yaml

SOA_NS = "ns.spf-suite.test."


def labels(name):
    """The lowercase labels of a name, or None if NSD cannot serve it."""
    name = name.rstrip(".").lower()
    parts = name.split(".")
    if any(len(p.encode()) == 0 or len(p.encode()) > 63 for p in parts):
        return None
    if len(name.encode()) > 253:
        return None
    return tuple(parts)


def dname(parts):
    """A zone-file domain name, absolute, every unusual octet as \\DDD."""
    if not parts:
        return "."
    out = []
    for p in parts:
        out.append(
            "".join(
                chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-_") else "\\%03d" % b
                for b in p.encode()
            )
        )
    return ".".join(out) + "."


def target(name):
    """A host name in record data (MX, PTR, CNAME), absolute; "" is the root (a null MX,
    RFC 7505)."""
    if name.strip(".") == "":
        return "."
    parts = labels(name)
    if parts is None:
        raise ValueError("cannot serve a record pointing at %r" % name)
    return dname(parts)


def charstrings(strings):
    """TXT/SPF rdata: each string as UTF-8, split into quoted character-strings of at most
    255 octets (SPF concatenates them, so the split changes nothing)."""
    if not strings:
        return ['""']  # a record of no strings cannot exist; the nearest is one empty string
    out = []
    for s in strings:
        data = str(s).encode("utf-8")
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        for c in chunks:
            text = ""
            for b in c:
                if b == 0x22 or b == 0x5C:
                    text += "\\" + chr(b)
                elif 0x20 <= b <= 0x7E:
                    text += chr(b)
                else:
                    text += "\\%03d" % b
            out.append('"%s"' % text)
    return out


def names_of(zonedata, notes):
    """Owner name -> (records, txt_times_out) as the reference driver sees them; records are
    (type, value) with TXT/SPF values tuples of strings."""
    result = {}
    for owner, items in zonedata.items():
        items = items or []
        records, txt, has_txt = [], [], False
        timeout_at = None  # index into records where TIMEOUT stood
        for item in items:
            if item == "TIMEOUT":
                if timeout_at is None:
                    timeout_at = len(records)
                continue
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError("%s: unknown record %r" % (owner, item))
            ((rtype, value),) = item.items()
            if rtype in ("TXT", "SPF"):
                value = tuple(value) if isinstance(value, list) else (value,)
                if rtype == "TXT":
                    has_txt = True
                elif rtype == "SPF" and value != ("NONE",):
                    txt.append(("TXT", value))
                if value == ("NONE",):
                    continue
            records.append((rtype, value))
        txt_times_out = timeout_at is not None and not any(
            t == "TXT" for t, _ in records[:timeout_at]
        )
        if timeout_at is not None and not txt_times_out:
            notes.append(
                "%s: TIMEOUT ignored, its TXT query answers (only other types would time out)"
                % owner
            )
        if not has_txt:
            records.extend(txt)
        # The reference driver keys names lowercased; a later key replaces an earlier one.
        result[owner.lower()] = (owner, records, txt_times_out)
    return result


def rdata(rtype, value):
    if rtype in ("TXT", "SPF"):
        return " ".join(charstrings(value))
    if rtype == "A":
        return str(ipaddress.IPv4Address(value))
    if rtype == "AAAA":
        return str(ipaddress.IPv6Address(value))
    if rtype == "MX":
        prio, host = value
        return "%d %s" % (int(prio), target(host))
    if rtype in ("PTR", "CNAME"):
        return target(value)
    raise ValueError("unknown record type %s" % rtype)


def scenario(doc):
    notes = []
    names = names_of(doc.get("zonedata") or {}, notes)
    servfail, served = set(), {}
    for owner, records, txt_times_out in names.values():
        parts = labels(owner)
        if parts is None:
            notes.append("%s: not a name NSD can serve (label over 63 octets or empty): skipped" % owner)
            continue
        if txt_times_out:
            servfail.add(parts)
            if records:
                notes.append("%s: TIMEOUT, served as SERVFAIL (its records dropped)" % owner)
            continue
        served[parts] = (owner, records)

    def zone_of(parts):
        below = [s for s in servfail if len(parts) > len(s) and parts[-len(s) :] == s]
        if below:
            deepest = max(below, key=len)
            return parts[-(len(deepest) + 1) :]
        return parts[-2:]  # "example.com"; "in-addr.arpa" and "ip6.arpa" for reverse names

    zones = {(): []}
    for parts in served:
        zones.setdefault(zone_of(parts), [])
    configured = set(zones) | servfail
    for parts, (owner, records) in served.items():
        zone = zone_of(parts)
        # NSD answers from the most specific zone it has: it must be this one.
        enclosing = max(
            (z for z in configured if parts[len(parts) - len(z) :] == z or not z), key=len
        )
        assert enclosing == zone, (owner, zone, enclosing)
        types = {t for t, _ in records}
        if "CNAME" in types and (parts == zone or len(types) > 1):
            notes.append("%s: CNAME at a zone apex or beside other data: skipped" % owner)
            continue
        for rtype, value in records:
            zones[zone].append("%s 300 IN %s %s" % (dname(parts), rtype, rdata(rtype, value)))
    out_zones = []
    for zone in sorted(zones, key=lambda z: (len(z), z)):
        origin = ".".join(zone) if zone else "."
        for z in zone:
            if not all(c.isascii() and (c.isalnum() or c in "-_") for c in z):
                raise ValueError("zone name %r does not fit nsd.conf and a file name" % origin)
        head = [
            "$TTL 300",
            "%s 300 IN SOA %s hostmaster.spf-suite.test. 1 3600 600 86400 300"
            % (dname(zone), SOA_NS),
            "%s 300 IN NS %s" % (dname(zone), SOA_NS),
        ]
        out_zones.append([origin, "\n".join(head + zones[zone]) + "\n"])
    tests = []
    for name, t in (doc.get("tests") or {}).items():
        result = t["result"]
        test = {
            "name": name,
            "spec": str(t.get("spec", "")),
            "helo": str(t["helo"]),
            "host": str(t["host"]),
            "mailfrom": str(t["mailfrom"]),
            "result": [str(r).lower() for r in (result if isinstance(result, list) else [result])],
        }
        if "explanation" in t:
            test["explanation"] = str(t["explanation"])
        tests.append(test)
    return {
        "description": str(doc.get("description", "")),
        "zones": out_zones,
        "servfail": sorted(".".join(s) for s in servfail),
        "notes": notes,
        "tests": tests,
    }


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: spf_zones.py rfc7208-tests.yml")
    with open(sys.argv[1], "rb") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    json.dump([scenario(d) for d in docs], sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
