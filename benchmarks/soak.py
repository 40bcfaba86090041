#!/usr/bin/env python3
"""Soak traffic for a running Rosetta on 127.0.0.1 (driven by benchmarks/soak.sh).

Mixed traffic from a fixed number of workers for a bounded time: whole answers, streams read
to the end, streams the client drops midway, streams the client never reads (the server
pauses them and aborts them after its stall timeout), completions with several prompts and
choices, and oversized requests. Each minute it prints the server's RSS, the KV blocks in
use, p50/p99 latency of the requests that completed in that minute and their statuses. At the
end it compares RSS with the end of the first minute; exit status 1 if it grew 5% or more.

Standard library only; no network beyond the server's loopback port.
"""

import argparse
import asyncio
import json
import random
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def http(host, port, method, path, body=None, read=True, drop_after=None, hold=None):
    """One HTTP/1.1 request on a fresh connection. Returns (status, bytes read)."""
    reader, writer = await asyncio.open_connection(host, port)
    data = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    status = 0
    got = 0
    try:
        if not read:
            # A client that never reads: keep the connection open, then leave.
            await asyncio.sleep(hold)
            return 0, 0
        line = await reader.readline()
        parts = line.split()
        status = int(parts[1]) if len(parts) > 1 else 0
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            got += len(chunk)
            if drop_after is not None and got >= drop_after:
                break
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    return status, got


def chat(rng, **extra):
    words = " ".join(rng.choice(["habari", "bonjour", "hello", "hola", "ciao", "привет"]) for _ in range(rng.randint(3, 40)))
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": words}],
        "max_tokens": rng.randint(8, 96),
        "ignore_eos": True,
    }
    body.update(extra)
    return body


async def worker(i, args, stats, stop_at):
    rng = random.Random(i)
    host, port = args.host, args.port
    while time.monotonic() < stop_at:
        kind = rng.choices(
            ["whole", "stream", "drop", "unread", "multi", "oversized"],
            weights=[30, 30, 15, 5, 15, 5],
        )[0]
        started = time.monotonic()
        try:
            if kind == "whole":
                status, _ = await http(host, port, "POST", "/v1/chat/completions", chat(rng))
            elif kind == "stream":
                status, _ = await http(host, port, "POST", "/v1/chat/completions", chat(rng, stream=True))
            elif kind == "drop":
                status, _ = await http(host, port, "POST", "/v1/chat/completions",
                                       chat(rng, stream=True, n=4, max_tokens=200), drop_after=rng.randint(200, 4000))
            elif kind == "unread":
                status, _ = await http(host, port, "POST", "/v1/chat/completions",
                                       chat(rng, stream=True, n=16, max_tokens=200, logprobs=True, top_logprobs=20),
                                       read=False, hold=rng.uniform(1, args.stall * 2))
            elif kind == "multi":
                status, _ = await http(host, port, "POST", "/v1/completions",
                                       {"model": "tiny", "prompt": ["one", "two", "three"], "n": 3,
                                        "max_tokens": rng.randint(4, 32), "ignore_eos": True})
            else:
                status, _ = await http(host, port, "POST", "/v1/completions",
                                       {"model": "tiny", "prompt": [[1]] * 5000, "stop_token_ids": [1] * 5000})
        except (ConnectionError, OSError) as e:
            status = f"conn:{type(e).__name__}"
        if kind != "unread":
            stats.append((time.monotonic(), time.monotonic() - started, kind, status))


async def load(host, port):
    try:
        _, _ = 0, 0
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET /load HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
        writer.close()
        body = raw.split(b"\r\n\r\n", 1)[1]
        return json.loads(body)["models"]["tiny"]
    except Exception:  # noqa: BLE001 - a report line must not stop the soak
        return {}


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--stall", type=float, default=5, help="the server's stream_stall_timeout")
    args = ap.parse_args()
    stats = []
    start = time.monotonic()
    stop_at = start + args.minutes * 60
    workers = [asyncio.create_task(worker(i, args, stats, stop_at)) for i in range(args.workers)]
    rss = []
    minute = 0
    print("minute  rss_MiB  kv_blocks_used  running  waiting  requests  p50_ms  p99_ms  statuses", flush=True)
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(60, max(0.0, start + (minute + 1) * 60 - time.monotonic())))
        minute += 1
        window = [s for s in stats if s[0] > start + (minute - 1) * 60]
        lat = [s[1] * 1000 for s in window]
        statuses = {}
        for s in window:
            statuses[str(s[3])] = statuses.get(str(s[3]), 0) + 1
        l = await load(args.host, args.port)
        r = rss_kib(args.pid)
        rss.append(r)
        print(f"{minute:6d}  {r / 1024:7.1f}  {l.get('kv_blocks_used', '?'):>14}  {l.get('running', '?'):>7}  "
              f"{l.get('waiting', '?'):>7}  {len(window):8d}  {percentile(lat, 50):6.0f}  {percentile(lat, 99):6.0f}  "
              f"{json.dumps(statuses, sort_keys=True)}", flush=True)
    await asyncio.gather(*workers)
    await asyncio.sleep(args.stall + 2)
    l = await load(args.host, args.port)
    final = rss_kib(args.pid)
    first = rss[0] if rss else final
    growth = (final - first) / first * 100
    bad = sum(1 for s in stats if not (isinstance(s[3], int) and s[3] in (200, 400, 429, 503)))
    print(f"after the traffic: kv_blocks_used {l.get('kv_blocks_used', '?')}, running {l.get('running', '?')}, "
          f"waiting {l.get('waiting', '?')}")
    print(f"RSS after minute 1: {first / 1024:.1f} MiB; at the end: {final / 1024:.1f} MiB; growth {growth:+.2f}%")
    print(f"requests: {len(stats)}; with a status other than 200/400/429/503 or a failed connection: {bad}")
    ok = growth < 5 and bad == 0 and l.get("kv_blocks_used") == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
