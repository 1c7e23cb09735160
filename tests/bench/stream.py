#!/usr/bin/env python3
"""Streaming through the gateway vs straight from the engine socket, same requests.

Each of --clients threads sends --requests streaming generations of --max-tokens tokens, first
to the engine's Unix socket (POST /v1/generate, NDJSON events), then to the gateway (POST
/v1/completions with "stream": true, SSE), alternating for --reps rounds. Prints tokens/s and
inter-chunk latency percentiles for both paths, and the gateway's overhead. Standard library
only; the client's own per-chunk cost is the same on both paths.

Then the latency the gateway adds to each token, measured in pairs (--pairs): the same prompt
is sent at the same instant straight to the engine and through the gateway. The engine
prefills equal fresh prompts together and decodes them in the same steps, so token i of both
streams leaves the engine in the same step and the difference of their arrival times is what
the path between costs that token. One single-threaded selector loop reads every socket and
stamps each read, so no client thread waits on another. A pair whose first tokens arrive more
than half a step apart was admitted in different steps and is left out (and counted). The
same measurement with both streams straight to the engine is the noise floor.
"""
import argparse
import http.client
import json
import selectors
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


def engine_request(args, prompt):
    """Path, headers and body of a generation straight to the engine (NDJSON events)."""
    body = json.dumps({"prompt": {"kind": "text", "value": prompt}, "max_tokens": args.max_tokens,
                       "temperature": 0.0})
    return "/v1/generate", {"host": "engine", "content-type": "application/json"}, body.encode()


def gateway_request(args, prompt):
    """Path, headers and body of the same generation through the gateway (OpenAI SSE)."""
    body = json.dumps({"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    return "/v1/completions", {"host": args.gateway, "content-type": "application/json",
                               "authorization": f"Bearer {args.key}"}, body.encode()


# One line of each path, read as (text, completion tokens or None, the stream's end). Only text
# counts as a chunk: a token that completes no UTF-8 character yet has nothing to show, and the
# gateway (rightly) sends no chunk for it. Counting those on one path but not the other would
# compare one-step gaps with two-step ones.
def engine_event(line):
    if not line.strip():
        return "", None, False
    event = json.loads(line)
    if event["event"] == "token":
        return event["text"], None, False
    if event["event"] == "done":
        return "", event["usage"]["completion_tokens"], True
    return "", None, False


def gateway_event(line):
    if not line.startswith(b"data: "):
        return "", None, False
    if line.startswith(b"data: [DONE]"):
        return "", None, True
    chunk = json.loads(line[6:])
    if chunk.get("usage"):
        return "", chunk["usage"]["completion_tokens"], False
    return (chunk["choices"][0]["text"] if chunk["choices"] else ""), None, False


def timed_stream(conn, request, parse):
    """Sends one generation on `conn`; the arrival time of each text chunk, and the completion
    tokens the stream reported."""
    path, headers, body = request
    conn.request("POST", path, body, headers)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    times, tokens = [], 0
    for line in response:
        text, count, done = parse(line)
        if text:
            times.append(time.perf_counter())
        if count is not None:
            tokens = count
        if done:
            break
    conn.close()
    return times, tokens


def engine_stream(args, prompt):
    return timed_stream(UnixConnection(args.engine_socket), engine_request(args, prompt),
                        engine_event)


def gateway_stream(args, prompt):
    host, port = args.gateway.rsplit(":", 1)
    return timed_stream(http.client.HTTPConnection(host, int(port)),
                        gateway_request(args, prompt), gateway_event)


def percentile(ordered, p):
    """The p-quantile of an ascending list (nan when empty)."""
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


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
    return {"tokens_per_s": totals[0] / wall, "tokens": totals[0],
            "p50_ms": percentile(gaps, 0.5) * 1e3, "p99_ms": percentile(gaps, 0.99) * 1e3,
            "wall_s": wall}


class PairedStream:
    """One streaming request read incrementally: HTTP/1.1 head, chunked or close-delimited
    body, then NDJSON (engine) or SSE (gateway) lines; the arrival time of each text piece."""

    def __init__(self, kind, args, prompt):
        self.texts, self.times, self.done = [], [], False
        self.raw, self.body, self.head, self.chunked = bytearray(), bytearray(), None, False
        if kind == "engine":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(args.engine_socket)
            path, headers, body = engine_request(args, prompt)
            self.parse = engine_event
        else:
            host, port = args.gateway.rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            path, headers, body = gateway_request(args, prompt)
            self.parse = gateway_event
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.request = (f"POST {path} HTTP/1.1\r\n{head}connection: close\r\n"
                        f"content-length: {len(body)}\r\n\r\n").encode() + body

    def send(self):
        self.sock.sendall(self.request)
        self.sock.setblocking(False)

    def feed(self, data, now):
        if not data:
            self.done = True
            return
        self.raw += data
        if self.head is None:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(self.raw[:end]).lower()
            assert self.head.startswith(b"http/1.1 200"), self.head
            self.chunked = b"transfer-encoding: chunked" in self.head
            del self.raw[:end + 4]
        if self.chunked:
            while True:
                line_end = self.raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(bytes(self.raw[:line_end]).split(b";")[0], 16)
                if len(self.raw) < line_end + 2 + size + 2:
                    break
                self.body += self.raw[line_end + 2:line_end + 2 + size]
                del self.raw[:line_end + 2 + size + 2]
                if size == 0:
                    self.done = True
        else:
            self.body += self.raw
            self.raw.clear()
        while (end := self.body.find(b"\n")) >= 0:
            line = bytes(self.body[:end])
            del self.body[:end + 1]
            self.line(line, now)

    def line(self, line, now):
        text, _, done = self.parse(line)
        if text:
            self.texts.append(text)
            self.times.append(now)
        self.done = self.done or done


def paired(args, kinds):
    """Per-token arrival differences (second kind minus first) over --pairs pairs, --clients
    pairs in flight; returns (differences in ms, pairs kept, pairs left out)."""
    selector = selectors.DefaultSelector()
    started, diffs, kept, dropped = 0, [], 0, 0
    open_pairs = {}

    def start(index):
        prompt = f"Reconcile invoice batch {index} against the general ledger."
        pair = [PairedStream(kind, args, prompt) for kind in kinds]
        # Alternate which request goes first, so neither path always has the head start.
        for stream in (pair if index % 2 == 0 else pair[::-1]):
            stream.send()
        for stream in pair:
            selector.register(stream.sock, selectors.EVENT_READ, (index, stream))
        open_pairs[index] = pair

    while started < min(args.clients, args.pairs):
        start(started)
        started += 1
    while open_pairs:
        for key, _ in selector.select():
            index, stream = key.data
            now = time.perf_counter()
            try:
                data = stream.sock.recv(65536)
            except BlockingIOError:
                continue
            stream.feed(data, now)
            if not stream.done:
                continue
            selector.unregister(stream.sock)
            stream.sock.close()
            pair = open_pairs[index]
            if not all(s.done for s in pair):
                continue
            del open_pairs[index]
            first, second = pair
            # Rows computed in different runs may round differently, and a random-weight
            # model's greedy choice then drifts: compare the pieces the two streams share.
            same = 0
            while (same < min(len(first.texts), len(second.texts))
                   and first.texts[same] == second.texts[same]):
                same += 1
            gaps = sorted(b - a for a, b in zip(first.times, first.times[1:same]))
            step = gaps[len(gaps) // 2] if gaps else 0.0
            if same >= 2 and abs(second.times[0] - first.times[0]) < step / 2:
                kept += 1
                diffs.extend((b - a) * 1e3 for a, b in zip(first.times[:same], second.times))
            else:
                dropped += 1
            if started < args.pairs:
                start(started)
                started += 1
    diffs.sort()
    return diffs, kept, dropped


def describe(diffs):
    if not diffs:
        return "no pair in lockstep"
    pct = lambda p: percentile(diffs, p)
    return (f"p50 {pct(0.5):+.3f} ms  p90 {pct(0.9):+.3f} ms  p99 {pct(0.99):+.3f} ms  "
            f"max {diffs[-1]:+.3f} ms  ({len(diffs)} tokens)")


def throughput(args):
    """Tokens/s and inter-chunk gaps, engine then gateway, alternating for --reps rounds."""
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
    parser.add_argument("--pairs", type=int, default=64,
                        help="paired requests for the per-token added latency (0: skip)")
    args = parser.parse_args()
    if args.reps:
        throughput(args)
    if args.pairs:
        for kinds, label in ((("engine", "engine"), "noise floor, engine vs engine"),
                             (("engine", "gateway"), "added by the gateway, gateway vs engine")):
            diffs, kept, dropped = paired(args, kinds)
            print(f"per-token arrival difference, {label}: {describe(diffs)}; "
                  f"{kept} pairs in lockstep, {dropped} left out", flush=True)


if __name__ == "__main__":
    main()
