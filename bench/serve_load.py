#!/usr/bin/env python3
"""Load benchmark of `seqlab serve` on the loopback interface: requests/s and p50/p99 latency
at several numbers of concurrent clients, with dynamic batching (--max-batch 32) and
without (--max-batch 1), and the batching gain (requests/s batched / unbatched).

Python standard library only. Every request goes to 127.0.0.1; the run is bounded in
requests (--requests per level) and time (--max-seconds per level).

    cargo build --release -p seqlab-cli
    python3 bench/serve_load.py --checkpoint runs/mt-bible-small \
        --sentences data/sample/bible.en-es.test.tsv --requests 300

Prints a Markdown table for docs/BENCHMARKS.md. Run it on an otherwise idle machine: the
numbers measure the machine as much as the server.
"""

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"  # loopback only, by design

DEFAULT_SENTENCES = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good.",
    "The Lord is my shepherd; I shall not want.",
    "Blessed are the meek: for they shall inherit the earth.",
    "Love is patient, love is kind.",
    "And the evening and the morning were the first day.",
]


def start_server(args, max_batch):
    cmd = [
        args.seqlab, "serve",
        "--checkpoint", f"bench={args.checkpoint}",
        "--host", HOST, "--port", "0",
        "--max-batch", str(max_batch),
        "--max-wait-ms", str(args.max_wait_ms),
        "--queue", str(args.queue),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + args.start_seconds
    port = None
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                sys.exit(f"seqlab serve exited with status {proc.returncode} before listening")
            continue
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        proc.kill()
        sys.exit(f"seqlab serve did not start listening within {args.start_seconds} s")
    # Keep draining stderr so the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, port


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def body(endpoint, text, i):
    if endpoint == "translate":
        return {"text": text}
    return {"prompt": text[:20], "max_tokens": 50, "seed": i}


def run_level(port, args, sentences, clients):
    """`clients` threads, each on its own keep-alive connection, share `args.requests`
    requests; returns (completed, errors, seconds, latencies)."""
    lock = threading.Lock()
    state = {"next": 0, "errors": 0}
    latencies = []
    stop_at = time.time() + args.max_seconds

    def worker():
        conn = http.client.HTTPConnection(HOST, port, timeout=args.timeout)
        while True:
            with lock:
                i = state["next"]
                if i >= args.requests or time.time() > stop_at:
                    break
                state["next"] += 1
            payload = json.dumps(body(args.endpoint, sentences[i % len(sentences)], i))
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"/v1/{args.endpoint}", payload, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=args.timeout)
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(dt)
                else:
                    state["errors"] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), state["errors"], time.perf_counter() - t0, latencies


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def read_sentences(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.rstrip("\n").split("\t")[0].strip()
            if s:
                out.append(s)
    return out or DEFAULT_SENTENCES


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="run or checkpoint folder to serve")
    ap.add_argument("--endpoint", choices=["translate", "generate"], default="translate",
                    help="translate (an mt checkpoint) or generate (an lm checkpoint); default translate")
    ap.add_argument("--seqlab", default="target/release/seqlab", help="the seqlab binary (default target/release/seqlab)")
    ap.add_argument("--sentences", help="text or src<TAB>tgt file whose first column is sent (default: 8 built-in sentences)")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated (default 1,8,32)")
    ap.add_argument("--requests", type=int, default=200, help="requests per level (default 200)")
    ap.add_argument("--max-seconds", type=float, default=60, help="time limit per level (default 60)")
    ap.add_argument("--timeout", type=float, default=60, help="client timeout per request, s (default 60)")
    ap.add_argument("--max-wait-ms", type=int, default=5, help="server --max-wait-ms (default 5)")
    ap.add_argument("--batch", type=int, default=32, help="server --max-batch when batching (default 32)")
    ap.add_argument("--queue", type=int, default=1024, help="server --queue (default 1024, above every level)")
    ap.add_argument("--threads", type=int, help="server --threads")
    ap.add_argument("--start-seconds", type=float, default=120, help="time allowed to load the model (default 120)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    if not os.path.exists(args.seqlab):
        sys.exit(f"{args.seqlab}: not found; build it with `cargo build --release -p seqlab-cli` or pass --seqlab")
    levels = [int(c) for c in args.clients.split(",")]
    sentences = read_sentences(args.sentences) if args.sentences else DEFAULT_SENTENCES
    results = {}
    for mode, max_batch in [("batched", args.batch), ("unbatched", 1)]:
        proc, port = start_server(args, max_batch)
        try:
            run_level(port, argparse.Namespace(**{**vars(args), "requests": 4}), sentences, 1)  # warm-up
            for c in levels:
                n, errors, secs, lat = run_level(port, args, sentences, c)
                results[(mode, c)] = {
                    "requests": n, "errors": errors, "seconds": secs,
                    "rps": n / secs if secs > 0 else float("nan"),
                    "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99),
                    "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
                }
                r = results[(mode, c)]
                print(f"{mode:9} clients {c:3}: {n} ok, {errors} failed in {secs:.1f} s: "
                      f"{r['rps']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms", file=sys.stderr)
        finally:
            stop_server(proc)
    print(f"\n`/v1/{args.endpoint}`, {args.requests} requests per level, --max-batch {args.batch} vs 1, "
          f"--max-wait-ms {args.max_wait_ms}\n")
    print("| clients | batched req/s | p50 ms | p99 ms | unbatched req/s | p50 ms | p99 ms | gain |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        b, u = results[("batched", c)], results[("unbatched", c)]
        gain = b["rps"] / u["rps"] if u["rps"] > 0 else float("nan")
        print(f"| {c} | {b['rps']:.1f} | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | "
              f"{u['rps']:.1f} | {u['p50_ms']:.1f} | {u['p99_ms']:.1f} | {gain:.2f}× |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({f"{m}-{c}": r for (m, c), r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
