#!/usr/bin/env python3
"""Streaming through the gateway vs straight from the engine socket, same requests.

Each of --clients threads sends --requests streaming generations of --max-tokens tokens, first
to the engine's Unix socket (POST /v1/generate, NDJSON events), then to the gateway (POST
/v1/completions with "stream": true, SSE), alternating for --reps rounds. Prints tokens/s and
inter-chunk latency percentiles for both paths, and the gateway's overhead. Standard library
only; the client's own per-chunk cost is the same on both paths.
"""
import argparse
import http.client
import json
import socket
import statistics
import threading
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def engine_stream(args, prompt):
    conn = UnixConnection(args.engine_socket)
    body = json.dumps({"prompt": {"kind": "text", "value": prompt}, "max_tokens": args.max_tokens,
                       "temperature": 0.0})
    conn.request("POST", "/v1/generate", body, {"content-type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    times, tokens = [], 0
    for line in response:
        event = json.loads(line)
        if event["event"] == "token":
            times.append(time.perf_counter())
        elif event["event"] == "done":
            tokens = event["usage"]["completion_tokens"]
            break
    conn.close()
    return times, tokens


def gateway_stream(args, prompt):
    host, port = args.gateway.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port))
    body = json.dumps({"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn.request("POST", "/v1/completions", body, {
        "content-type": "application/json", "authorization": f"Bearer {args.key}"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    times, tokens = [], 0
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["text"]:
            times.append(time.perf_counter())
    conn.close()
    return times, tokens


def run(path, args):
    gaps, totals, lock = [], [0], threading.Lock()

    def client(index):
        for r in range(args.requests):
            prompt = f"Summarise ledger entry {index}-{r} for the quarterly report."
            times, tokens = path(args, prompt)
            with lock:
                gaps.extend(b - a for a, b in zip(times, times[1:]))
                totals[0] += tokens

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    gaps.sort()
    pct = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))] * 1e3 if gaps else float("nan")
    return {"tokens_per_s": totals[0] / wall, "tokens": totals[0], "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "wall_s": wall}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine-socket", required=True)
    parser.add_argument("--gateway", required=True, help="HOST:PORT (plaintext)")
    parser.add_argument("--key", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    results = {"engine": [], "gateway": []}
    for rep in range(args.reps):
        for name, path in (("engine", engine_stream), ("gateway", gateway_stream)):
            r = run(path, args)
            results[name].append(r)
            print(f"rep {rep} {name:8} {r['tokens_per_s']:8.1f} tok/s  inter-chunk p50 "
                  f"{r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  ({r['tokens']} tokens, "
                  f"{r['wall_s']:.1f} s)", flush=True)
    med = lambda name, key: statistics.median(r[key] for r in results[name])
    e, g = med("engine", "tokens_per_s"), med("gateway", "tokens_per_s")
    print(f"median tokens/s: engine {e:.1f}, gateway {g:.1f} ({(g / e - 1) * 100:+.1f}%)")
    for key in ("p50_ms", "p99_ms"):
        print(f"median inter-chunk {key[:3]}: engine {med('engine', key):.3f} ms, gateway "
              f"{med('gateway', key):.3f} ms (added {med('gateway', key) - med('engine', key):+.3f} ms)")


if __name__ == "__main__":
    main()
