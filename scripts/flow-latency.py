#!/usr/bin/env python3
"""Sequential login + verify flows against a running otpgate (EXPOSE_OTP=true); prints latency
percentiles per step and per flow. Usage: scripts/flow-latency.py [base_url] [flows]

One keep-alive connection, one flow at a time: this measures latency, not throughput.
"""
import http.client
import json
import random
import statistics
import sys
import time
from urllib.parse import urlparse

base = urlparse(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
flows = int(sys.argv[2]) if len(sys.argv) > 2 else 500
conn = http.client.HTTPConnection(base.hostname, base.port or 80)


def post(path, body):
    start = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    elapsed = time.perf_counter() - start
    if resp.status != 200:
        sys.exit(f"{path}: {resp.status} {data}")
    return data, elapsed


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


steps = {"login": [], "verify": [], "flow": []}
for _ in range(20):  # warm-up
    phone = "+919%09d" % random.randrange(10**9)
    code = post("/api/auth/login", {"phone": phone})[0]["otp_code"]
    post("/api/auth/verify-otp", {"phone": phone, "otp_code": code})
for _ in range(flows):
    phone = "+919%09d" % random.randrange(10**9)
    login, t_login = post("/api/auth/login", {"phone": phone})
    _, t_verify = post("/api/auth/verify-otp", {"phone": phone, "otp_code": login["otp_code"]})
    steps["login"].append(t_login)
    steps["verify"].append(t_verify)
    steps["flow"].append(t_login + t_verify)

print(f"{flows} sequential new-user flows against {base.geturl()}")
for name, values in steps.items():
    print(
        f"{name:7} p50 {pct(values, 50):6.2f} ms  p90 {pct(values, 90):6.2f} ms  "
        f"p99 {pct(values, 99):6.2f} ms  mean {statistics.mean(values) * 1000:6.2f} ms"
    )
