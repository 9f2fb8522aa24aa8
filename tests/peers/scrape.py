"""Fetches a URL of the gateway's admin HTTP listener (urllib) and prints one JSON object:
{"status": code, "content_type": ..., "samples": [...]}. For /metrics the body is parsed
with the prometheus_client package's OpenMetrics parser (a parser nobody here wrote), each
sample as {"name", "labels", "value"}; a body it cannot parse makes the script fail.

  scrape.py URL
"""
import json
import sys
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main():
    url = sys.argv[1]
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            status, ctype, body = r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        status, ctype, body = e.code, e.headers.get("Content-Type", ""), e.read()
    out = {"status": status, "content_type": ctype, "samples": []}
    if url.endswith("/metrics") and status == 200:
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for s in family.samples:
                out["samples"].append(
                    {"name": s.name, "labels": dict(s.labels), "value": s.value}
                )
    else:
        out["body"] = body.decode("utf-8", "replace")
    print(json.dumps(out))


main()
