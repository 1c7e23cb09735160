#!/usr/bin/env python3
"""Load and soak test for `moebox up` on loopback (Python standard library only).

Starts the real appliance (`moebox up --data-dir DIR --listen 127.0.0.1:0`: gateway plus one
supervised CPU engine on the bundled fixture), creates one API key per group of clients and one
key with a low requests-per-minute limit, then runs N concurrent clients for a fixed time. Each
client keeps an HTTP/1.1 keep-alive connection and loops over a seeded random mix of

  * streaming chat completions read to `data: [DONE]` (with `stream_options.include_usage`),
  * whole (non-streaming) chat completions,
  * streaming requests it abandons after a few tokens by closing the socket,

with short, medium and long prompts and varied `max_tokens`. A burst task fires volleys over
the low-rpm key's limit and expects 429s; the other keys have no rate limit and must keep
working. A client that is shed (429 or 503 `overloaded`) waits its `Retry-After` and goes on.

While it runs it samples the resident memory of the gateway (the `up` process) and of the
engine (`up`'s child `moebox engine`), the machine's load average and its own CPU time. After
the run it lets in-flight requests finish (bounded), checks that every completed request's
`x-request-id` is in the ledger (SQLite, read-only) and, when the day holds at most 10,000
records, in the admin export `GET /admin/records.json`, measures the gateway's idle RSS again,
stops `up` with SIGTERM and prints a report (text, and JSON with --json-out).

Exit status: 0 when every target holds, 1 when one fails, 2 on a setup error. Targets:
  * no real errors: no 5xx other than deliberate 503 `overloaded` shedding, no unexpected 4xx,
    no error event inside a stream, no connection error or timeout, no request unfinished when
    the drain deadline passed;
  * gateway and engine RSS flat: the mean of the last window of samples is within ±10% of the
    mean of the first window after warm-up;
  * the engine was not restarted during the run;
  * every completed request is in the ledger with status 200, every abandoned stream whose
    response headers arrived is in it with some status;
  * the low-rpm key got 429 `rate_limit_exceeded`; the other keys got none;
  * gateway RSS when idle (after `ready`, before load) is below 30 MB.

Bounded and self-stopping: the run ends after --duration seconds, the drain after --drain
seconds, every request has a deadline, and a watchdog kills `up` and exits if the whole
script runs past duration + drain + setup allowance.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Targets (issue 8: 200 streaming clients for 10 minutes; issue 4: gateway RSS idle < 30 MB).
MEMORY_DRIFT_LIMIT_PERCENT = 10.0
GATEWAY_IDLE_RSS_LIMIT_MB = 30.0
# Above this share of one core the single-threaded generator may be what limits throughput.
GENERATOR_SATURATED_PERCENT = 80.0

# Defaults; each is a command-line option.
DEFAULT_DURATION_S = 600
DEFAULT_CLIENTS = 200
DEFAULT_CLIENTS_PER_KEY = 10  # below the gateway's per-key concurrency cap (16)
DEFAULT_BURST_RPM = 20
DEFAULT_BURST_INTERVAL_S = 20.0
DEFAULT_DRAIN_S = 60.0
DEFAULT_REQUEST_TIMEOUT_S = 120.0
DEFAULT_SAMPLE_INTERVAL_S = 1.0
DEFAULT_STARTUP_TIMEOUT_S = 120.0
# Memory drift compares the mean of this many seconds after warm-up with the last ones.
DEFAULT_MEMORY_WINDOW_S = 60.0
# Longest pause a shed client honours (Retry-After is 2-3 s by default).
MAX_RETRY_AFTER_S = 5.0
SHUTDOWN_GRACE_S = 40.0
LEDGER_SETTLE_S = 15.0
EXPORT_MAX_RECORDS = 10_000

WORDS = (
    "ledger balance quarterly revenue invoice audit margin forecast supplier contract "
    "payroll expense budget capital asset liability equity dividend accrual reconcile "
    "cash flow statement report summary customer order shipment inventory warehouse"
).split()

# Share of requests per kind (the rest are abandoned streams).
STREAM_SHARE = 0.70
WHOLE_SHARE = 0.20


class SetupError(Exception):
    pass


# --- statistics -------------------------------------------------------------------------


class Histogram:
    """Log-bucketed latency histogram (2% buckets): bounded memory for millions of samples."""

    RATIO = math.log(1.02)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        value = max(seconds, 1e-6)
        key = int(math.floor(math.log(value) / self.RATIO))
        self.buckets[key] = self.buckets.get(key, 0) + 1
        self.count += 1
        if value > self.max:
            self.max = value

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                # Upper edge of the bucket: never reports less than the sample was.
                return min(math.exp((key + 1) * self.RATIO), self.max)
        return self.max

    def summary_ms(self) -> dict:
        out: dict = {"count": self.count}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            v = self.quantile(q)
            out[name] = None if v is None else round(v * 1000, 3)
        out["max"] = round(self.max * 1000, 3) if self.count else None
        return out


@dataclass
class Stats:
    started: float = 0.0
    completed_stream: int = 0
    completed_whole: int = 0
    abandoned: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    abandoned_tokens: int = 0
    statuses: dict = field(default_factory=dict)  # "429 rate_limit_exceeded" -> n
    shed: dict = field(default_factory=dict)  # deliberate 429/503 by key kind
    real_errors: dict = field(default_factory=dict)  # description -> n
    error_examples: list = field(default_factory=list)
    ttft: Histogram = field(default_factory=Histogram)
    itl: Histogram = field(default_factory=Histogram)
    e2e_stream: Histogram = field(default_factory=Histogram)
    e2e_whole: Histogram = field(default_factory=Histogram)
    completed_ids: set = field(default_factory=set)
    abandoned_ids: set = field(default_factory=set)
    burst_sent: int = 0
    burst_ok: int = 0
    unfinished: int = 0

    def bump(self, table: dict, key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def real_error(self, what: str, detail: str = "") -> None:
        self.bump(self.real_errors, what)
        if len(self.error_examples) < 20:
            self.error_examples.append(f"{what}: {detail[:300]}")


# --- a minimal HTTP/1.1 client ------------------------------------------------------------


# Keep-alive connections the server had closed while idle, reopened before a request.
STALE_RECONNECTS = 0


class Response:
    def __init__(self, status: int, headers: dict[str, str]):
        self.status = status
        self.headers = headers


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened after a close or an error."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ensure(self) -> bool:
        """Opens the connection if needed; whether it is a reused one."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=1 << 20
            )
            return False
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, key: str, body: bytes | None) -> Response:
        reused = await self.ensure()
        try:
            return await self._request(method, path, key, body)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as error:
            # A server may close a keep-alive connection that sat idle; that shows as the
            # connection closing before any byte of the answer. Like every HTTP client, open a
            # fresh one and send again (the server never saw the request).
            partial = getattr(error, "partial", b"")
            if not reused or partial:
                raise
            global STALE_RECONNECTS
            STALE_RECONNECTS += 1
            self.close()
            await self.ensure()
            return await self._request(method, path, key, body)

    async def _request(self, method: str, path: str, key: str, body: bytes | None) -> Response:
        assert self.writer is not None and self.reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {key}\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ConnectionError(f"bad status line {lines[0]!r}")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return Response(int(parts[1]), headers)

    async def body_chunks(self, response: Response):
        """Yields the body's pieces as they arrive (chunked or Content-Length)."""
        assert self.reader is not None
        if response.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await self.reader.readline()
                if not size_line:
                    raise ConnectionError("connection closed inside a chunked body")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers (none expected) end with an empty line.
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in response.headers:
            length = int(response.headers["content-length"])
            if length:
                yield await self.reader.readexactly(length)
        else:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                yield data
            self.close()
        if response.headers.get("connection", "").lower() == "close":
            self.close()

    async def read_body(self, response: Response) -> bytes:
        return b"".join([piece async for piece in self.body_chunks(response)])


# --- the workload -----------------------------------------------------------------------


def make_prompt(rng: random.Random) -> tuple[str, str]:
    size = rng.random()
    # The fixture holds 512 tokens per request (prompt, chat template and completion); with
    # its tokenizer and template this vocabulary costs up to 5.5 tokens a word (80 words made
    # 438 prompt tokens), so the longest prompt (65 words, about 360 tokens) plus the largest
    # `max_tokens` (96) stays inside it.
    if size < 0.5:
        label, words = "short", rng.randint(3, 10)
    elif size < 0.85:
        label, words = "medium", rng.randint(20, 40)
    else:
        label, words = "long", rng.randint(50, 65)
    return label, " ".join(rng.choice(WORDS) for _ in range(words))


def chat_body(model: str, prompt: str, max_tokens: int, stream: bool) -> bytes:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def error_code(body: bytes) -> str:
    try:
        return json.loads(body)["error"]["code"] or "none"
    except Exception:
        return "unparsed"


def retry_after(response: Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "1")), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


async def classify_refusal(
    stats: Stats, conn: Connection, response: Response, key_kind: str
) -> float | None:
    """Counts a non-200 answer. Returns how long to wait before the next request."""
    body = await conn.read_body(response)
    code = error_code(body)
    stats.bump(stats.statuses, f"{response.status} {code}")
    if response.status == 429 or (response.status == 503 and code == "overloaded"):
        stats.bump(stats.shed, f"{key_kind} {response.status} {code}")
        return retry_after(response) * (0.5 + random.random())
    stats.real_error(f"HTTP {response.status} {code}", body.decode("utf-8", "replace"))
    return 1.0


async def one_request(
    stats: Stats, conn: Connection, key: str, model: str, rng: random.Random, measuring: bool
) -> float | None:
    """Runs one request of the mix. Returns a pause before the next one, if any."""
    roll = rng.random()
    kind = "stream" if roll < STREAM_SHARE else "whole" if roll < STREAM_SHARE + WHOLE_SHARE else "abandon"
    _, prompt = make_prompt(rng)
    max_tokens = rng.randint(8, 96)
    abandon_after = rng.randint(1, 6)
    body = chat_body(model, prompt, max_tokens, kind != "whole")
    sent = time.monotonic()
    response = await conn.request("POST", "/v1/chat/completions", key, body)
    if response.status != 200:
        return await classify_refusal(stats, conn, response, "user")
    stats.bump(stats.statuses, "200")
    request_id = response.headers.get("x-request-id")
    if not request_id:
        stats.real_error("200 without x-request-id")
    if kind == "whole":
        payload = json.loads(await conn.read_body(response))
        done = time.monotonic()
        usage = payload.get("usage") or {}
        stats.completed_whole += 1
        stats.completion_tokens += usage.get("completion_tokens", 0)
        stats.prompt_tokens += usage.get("prompt_tokens", 0)
        if measuring:
            stats.e2e_whole.add(done - sent)
        if request_id:
            stats.completed_ids.add(request_id)
        return None

    buffer = b""
    tokens = 0
    last = None
    finished = False
    usage = None
    async for piece in conn.body_chunks(response):
        now = time.monotonic()
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue  # keep-alive comments
                data = line[5:].strip()
                if data == b"[DONE]":
                    finished = True
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    stats.real_error(
                        f"stream error event {chunk['error'].get('code')}", data.decode()
                    )
                    continue
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        tokens += 1
                        if measuring:
                            if last is None:
                                stats.ttft.add(now - sent)
                            else:
                                stats.itl.add(now - last)
                        last = now
        if kind == "abandon" and tokens >= abandon_after:
            conn.close()  # the client goes away mid-stream
            stats.abandoned += 1
            stats.abandoned_tokens += tokens
            if request_id:
                stats.abandoned_ids.add(request_id)
            return None
    done = time.monotonic()
    if kind == "abandon":
        # The answer was shorter than the point where the client meant to leave.
        kind = "stream"
    if not finished:
        stats.real_error("stream ended without [DONE]", request_id or "")
        conn.close()
        return 1.0
    stats.completed_stream += 1
    if usage:
        stats.completion_tokens += usage.get("completion_tokens", 0)
        stats.prompt_tokens += usage.get("prompt_tokens", 0)
    else:
        stats.real_error("stream without a usage chunk", request_id or "")
    if measuring:
        stats.e2e_stream.add(done - sent)
    if request_id:
        stats.completed_ids.add(request_id)
    return None


async def client_loop(
    index: int, stats: Stats, host: str, port: int, key: str, model: str, seed: int,
    stop_at: float, warm_until: float, timeout: float,
) -> None:
    rng = random.Random(seed * 100_003 + index)
    conn = Connection(host, port)
    # Spread the start over the first seconds so the run ramps up.
    await asyncio.sleep(rng.random() * 5)
    while time.monotonic() < stop_at:
        try:
            pause = await asyncio.wait_for(
                one_request(stats, conn, key, model, rng, time.monotonic() >= warm_until),
                timeout,
            )
        except asyncio.TimeoutError:
            stats.real_error("timeout", f"client {index}")
            conn.close()
            pause = 1.0
        except asyncio.CancelledError:
            stats.unfinished += 1
            conn.close()
            raise
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as error:
            stats.real_error(f"connection {type(error).__name__}", str(error))
            conn.close()
            pause = 1.0
        if pause:
            await asyncio.sleep(pause)
    conn.close()


async def burst_loop(
    stats: Stats, host: str, port: int, key: str, model: str, rpm: int, interval: float,
    stop_at: float, timeout: float,
) -> None:
    """Every `interval` seconds, `rpm + 5` small whole requests on the low-rpm key, 8 at once."""
    conns = [Connection(host, port) for _ in range(8)]
    body = chat_body(model, "ledger balance", 4, False)
    await asyncio.sleep(3)

    async def fire(conn: Connection, count: int) -> None:
        for _ in range(count):
            stats.burst_sent += 1
            try:
                response = await asyncio.wait_for(
                    conn.request("POST", "/v1/chat/completions", key, body), timeout
                )
                if response.status == 200:
                    await conn.read_body(response)
                    stats.burst_ok += 1
                    stats.bump(stats.statuses, "200")
                    if rid := response.headers.get("x-request-id"):
                        stats.completed_ids.add(rid)
                else:
                    await classify_refusal(stats, conn, response, "burst")
            except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
                stats.real_error(f"burst connection {type(error).__name__}", str(error))
                conn.close()

    while time.monotonic() < stop_at:
        per = math.ceil((rpm + 5) / len(conns))
        await asyncio.gather(*(fire(c, per) for c in conns))
        await asyncio.sleep(interval)
    for conn in conns:
        conn.close()


# --- processes and memory ----------------------------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon: heap, including SQLite's page cache; RssFile: mapped
    files such as the binary's own pages) from /proc/PID/status."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name = line.split(":", 1)[0]
                if name in ("VmRSS", "RssAnon", "RssFile"):
                    out[name] = int(line.split()[1])
    except OSError:
        pass
    return out


def rss_kib(pid: int) -> int | None:
    return memory_kib(pid).get("VmRSS")


def ledger_kib(database: Path) -> int:
    """The ledger's size on disk: the database and its WAL."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(f"{database}{suffix}").st_size
        except OSError:
            pass
    return total // 1024


def engine_pid(parent: int) -> int | None:
    """`up`'s child `moebox engine` (there is one on the CPU)."""
    children = []
    # Each thread lists the children it spawned; tokio spawns from its worker threads.
    try:
        for task in Path(f"/proc/{parent}/task").iterdir():
            try:
                children += (task / "children").read_text().split()
            except OSError:
                pass
    except OSError:
        pass
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"engine" in cmdline:
            return int(child)
    return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Sample:
    t: float
    gateway_kib: int | None
    gateway_anon_kib: int | None
    gateway_file_kib: int | None
    engine_kib: int | None
    engine_pid: int | None
    ledger_kib: int
    load1: float


async def sampler(up_pid: int, database: Path, t0: float, samples: list, interval: float,
                  stop: asyncio.Event) -> None:
    while not stop.is_set():
        epid = engine_pid(up_pid)
        gateway = memory_kib(up_pid)
        samples.append(
            Sample(
                round(time.monotonic() - t0, 2),
                gateway.get("VmRSS"),
                gateway.get("RssAnon"),
                gateway.get("RssFile"),
                rss_kib(epid) if epid else None,
                epid,
                ledger_kib(database),
                os.getloadavg()[0],
            )
        )
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


# The memory series the report judges: report name, sample field (KiB).
MEMORY_SERIES = (
    ("gateway_rss", "gateway_kib"),
    ("gateway_rss_anon", "gateway_anon_kib"),
    ("gateway_rss_file", "gateway_file_kib"),
    ("ledger_on_disk", "ledger_kib"),
    ("engine_rss", "engine_kib"),
)


def memory_report(values: list[tuple[float, int]], warm_until: float, window: float) -> dict:
    """min/max/first/last over the run, and the drift of the last window's mean from the
    first window's mean after warm-up."""
    if not values:
        return {"samples": 0}
    kib = [v for _, v in values]
    after = [(t, v) for t, v in values if t >= warm_until]
    out = {
        "samples": len(values),
        "first_mb": round(kib[0] / 1024, 1),
        "last_mb": round(kib[-1] / 1024, 1),
        "min_mb": round(min(kib) / 1024, 1),
        "max_mb": round(max(kib) / 1024, 1),
    }
    if len(after) >= 4:
        start = after[0][0]
        end = after[-1][0]
        span = min(window, (end - start) / 3)
        first = [v for t, v in after if t <= start + span]
        last = [v for t, v in after if t >= end - span]
        first_mean = sum(first) / len(first)
        last_mean = sum(last) / len(last)
        out.update(
            {
                "after_warmup_min_mb": round(min(v for _, v in after) / 1024, 1),
                "after_warmup_max_mb": round(max(v for _, v in after) / 1024, 1),
                "window_s": round(span, 1),
                "first_window_mean_mb": round(first_mean / 1024, 1),
                "last_window_mean_mb": round(last_mean / 1024, 1),
                "drift_percent": round((last_mean - first_mean) / first_mean * 100, 2),
                "band_percent": round(
                    (max(v for _, v in after) - min(v for _, v in after)) / first_mean * 100, 2
                ),
            }
        )
    return out


class Appliance:
    """`moebox up` as a child process, its announced url and keys."""

    def __init__(self, binary: Path, data_dir: Path, log_path: Path, env: dict):
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary), "up", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            start_new_session=True,
        )
        self.announced: dict[str, str] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == "ready":
                self.ready.set()
            elif ": " in line:
                name, value = line.split(": ", 1)
                self.announced[name] = value

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            code = self.proc.poll()
            raise SetupError(
                f"`moebox up` not ready after {timeout:.0f} s (exit status {code}); "
                f"see {self.log.name}"
            )

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SHUTDOWN_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def create_key(binary: Path, config: str, name: str, rpm: int | None, env: dict) -> str:
    cmd = [str(binary), "keys", "create", "--config", config, "--name", name]
    if rpm:
        cmd += ["--rpm", str(rpm)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    if out.returncode != 0:
        raise SetupError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    key = out.stdout.strip().splitlines()[-1].strip()
    if not key.startswith("mbx_"):
        raise SetupError(f"`moebox keys create` printed {out.stdout!r}, not a key")
    return key


# --- ledger -------------------------------------------------------------------------------


def ledger_rows(database: Path, since_ms: int) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return dict(
            conn.execute(
                "SELECT request_id, status FROM usage WHERE started_at_ms >= ?", (since_ms,)
            ).fetchall()
        )
    finally:
        conn.close()


def check_ledger(database: Path, since_ms: int, completed: set, abandoned: set) -> dict:
    deadline = time.monotonic() + LEDGER_SETTLE_S
    while True:
        rows = ledger_rows(database, since_ms)
        missing = [r for r in completed if r not in rows]
        missing_abandoned = [r for r in abandoned if r not in rows]
        if (not missing and not missing_abandoned) or time.monotonic() > deadline:
            break
        time.sleep(1)
    not_200 = [r for r in completed if r in rows and rows[r] != 200]
    statuses: dict[str, int] = {}
    for r in abandoned:
        if r in rows:
            statuses[str(rows[r])] = statuses.get(str(rows[r]), 0) + 1
    return {
        "ledger_records_since_start": len(rows),
        "completed": len(completed),
        "completed_missing": len(missing),
        "completed_not_200": len(not_200),
        "abandoned_with_id": len(abandoned),
        "abandoned_missing": len(missing_abandoned),
        "abandoned_statuses": statuses,
        "missing_examples": (missing + missing_abandoned)[:5],
    }


def check_export(url: str, admin_key: str, days: list[str], completed: set) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def fetch() -> tuple[int, bytes]:
        conn = Connection(host, int(port))
        try:
            response = await conn.request(
                "GET", f"/admin/records.json?from={days[0]}&to={days[-1]}", admin_key, None
            )
            return response.status, await conn.read_body(response)
        finally:
            conn.close()

    status, body = asyncio.run(fetch())
    if status != 200:
        return {"status": status, "skipped": error_code(body)}
    data = json.loads(body)
    records = data if isinstance(data, list) else data.get("records", [])
    ids = {r.get("request_id") for r in records}
    return {
        "status": 200,
        "records": len(records),
        "completed_missing": sum(1 for r in completed if r not in ids),
    }


# --- the run ------------------------------------------------------------------------------


async def drive(args, stats: Stats, url: str, model: str, user_keys: list[str], burst_key: str,
                up_pid: int, samples: list, t0: float) -> float:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    port_n = int(port)
    start = time.monotonic()
    stop_at = start + args.duration
    warm_until = start + args.warmup
    stats.started = start
    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(
        sampler(up_pid, args.database, t0, samples, args.sample_interval, stop_sampling)
    )
    tasks = [
        asyncio.create_task(
            client_loop(i, stats, host, port_n, user_keys[i % len(user_keys)], model, args.seed,
                        stop_at, warm_until, args.request_timeout)
        )
        for i in range(args.clients)
    ]
    tasks.append(
        asyncio.create_task(
            burst_loop(stats, host, port_n, burst_key, model, args.burst_rpm, args.burst_interval,
                       stop_at, args.request_timeout)
        )
    )
    progress_every = max(10.0, args.duration / 20)
    next_progress = start + progress_every
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(1.0, max(0.0, stop_at - time.monotonic())))
        if time.monotonic() >= next_progress:
            next_progress += progress_every
            last = samples[-1] if samples else None
            print(
                f"  t={time.monotonic() - start:5.0f}s done={stats.completed_stream + stats.completed_whole}"
                f" abandoned={stats.abandoned} shed={sum(stats.shed.values())}"
                f" errors={sum(stats.real_errors.values())}"
                + (f" gw={last.gateway_kib / 1024:.1f}MB" if last and last.gateway_kib else "")
                + (f" engine={last.engine_kib / 1024:.1f}MB" if last and last.engine_kib else "")
                + (f" load={last.load1:.1f}" if last else ""),
                flush=True,
            )
    # Drain: no new requests start after stop_at; in-flight ones get `drain` seconds.
    _, pending = await asyncio.wait(tasks, timeout=args.drain)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    elapsed = time.monotonic() - start
    stop_sampling.set()
    await sampling
    return elapsed


def idle_rss(up_pid: int, seconds: float = 3.0) -> float | None:
    values = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = rss_kib(up_pid)
        if v:
            values.append(v)
        time.sleep(0.5)
    return round(max(values) / 1024, 1) if values else None


def default_binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "moebox"


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", type=Path, default=default_binary(),
                   help="moebox release binary (default: $CARGO_TARGET_DIR/release/moebox)")
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="seconds of load")
    p.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="concurrent clients")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds excluded from latency and memory-drift figures "
                        "(default: a fifth of the duration, at most 60)")
    p.add_argument("--clients-per-key", type=int, default=DEFAULT_CLIENTS_PER_KEY)
    p.add_argument("--burst-rpm", type=int, default=DEFAULT_BURST_RPM,
                   help="requests-per-minute limit of the key the bursts use")
    p.add_argument("--burst-interval", type=float, default=DEFAULT_BURST_INTERVAL_S)
    p.add_argument("--drain", type=float, default=DEFAULT_DRAIN_S,
                   help="seconds in-flight requests get after the run")
    p.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S)
    p.add_argument("--sample-interval", type=float, default=DEFAULT_SAMPLE_INTERVAL_S)
    p.add_argument("--memory-window", type=float, default=DEFAULT_MEMORY_WINDOW_S)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data folder for `moebox up` (default: a fresh temporary one, removed "
                        "after a passing run)")
    p.add_argument("--json-out", type=Path, default=None, help="write the report as JSON here")
    args = p.parse_args(argv)
    for name in ("duration", "clients", "clients_per_key", "burst_rpm", "drain",
                 "request_timeout", "sample_interval"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.clients_per_key > 16:
        p.error("--clients-per-key must be at most 16 (gateway.per_key_max_concurrent), "
                f"got {args.clients_per_key}")
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 5)
    if not 0 <= args.warmup < args.duration:
        p.error(f"--warmup must be in [0, duration), got {args.warmup}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.binary.is_file():
        print(f"error: --binary {args.binary} does not exist; build it with "
              "`cargo build --release -p moebox`", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if "ORT_DYLIB_PATH" not in env:
        bundled = REPO / ".moebox/onnxruntime/libonnxruntime.so.1.31.1"
        if bundled.is_file():
            env["ORT_DYLIB_PATH"] = str(bundled)
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="moebox-soak-")) if temporary else args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "up.log"
    # Watchdog: whatever happens, the script ends.
    budget = args.duration + args.drain + DEFAULT_STARTUP_TIMEOUT_S + LEDGER_SETTLE_S + 120
    t0 = time.monotonic()
    wall_start = dt.datetime.now(dt.timezone.utc)
    since_ms = int(time.time() * 1000) - 1000
    appliance = Appliance(args.binary, data_dir, log_path, env)

    def watchdog() -> None:
        time.sleep(budget)
        print(f"error: watchdog: still running after {budget:.0f} s; killing", file=sys.stderr)
        try:
            os.killpg(appliance.proc.pid, signal.SIGKILL)
        finally:
            os._exit(2)

    threading.Thread(target=watchdog, daemon=True).start()
    report: dict = {}
    try:
        appliance.wait_ready(DEFAULT_STARTUP_TIMEOUT_S)
        url = appliance.announced["url"]
        if not url.startswith("http://"):
            raise SetupError(f"expected a plaintext loopback url, got {url}")
        config = appliance.announced["config"]
        admin_key = appliance.announced["admin key"]
        model = json.loads(
            asyncio.run(_get(url, "/v1/models", appliance.announced["user key"]))
        )["data"][0]["id"]
        time.sleep(2)
        report["gateway_idle_rss_mb_before"] = idle_rss(appliance.proc.pid)
        key_count = math.ceil(args.clients / args.clients_per_key)
        user_keys = [create_key(args.binary, config, f"soak {i}", None, env) for i in range(key_count)]
        burst_key = create_key(args.binary, config, "soak burst", args.burst_rpm, env)
        print(f"moebox up at {url} (pid {appliance.proc.pid}), {args.clients} clients on "
              f"{key_count} keys, burst key at {args.burst_rpm} rpm, {args.duration:.0f} s "
              f"(warm-up {args.warmup:.0f} s), data in {data_dir}", flush=True)

        args.database = data_dir / "moebox.sqlite"
        stats = Stats()
        samples: list[Sample] = []
        cpu0 = cpu_seconds()
        load_start = os.getloadavg()
        elapsed = asyncio.run(drive(args, stats, url, model, user_keys, burst_key,
                                    appliance.proc.pid, samples, t0))
        cpu_used = cpu_seconds() - cpu0
        load_end = os.getloadavg()
        time.sleep(5)
        report["gateway_idle_rss_mb_after"] = idle_rss(appliance.proc.pid)
        run_start_rel = stats.started - t0
        warm_rel = run_start_rel + args.warmup
        ledger = check_ledger(data_dir / "moebox.sqlite", since_ms, stats.completed_ids,
                              stats.abandoned_ids)
        days = sorted({wall_start.date().isoformat(),
                       dt.datetime.now(dt.timezone.utc).date().isoformat()})
        export = (
            check_export(url, admin_key, days, stats.completed_ids)
            if ledger["ledger_records_since_start"] <= EXPORT_MAX_RECORDS
            else {"skipped": f"more than {EXPORT_MAX_RECORDS} records; checked in SQLite only"}
        )
        engine_pids = {s.engine_pid for s in samples if s.engine_pid}
        completed = stats.completed_stream + stats.completed_whole
        report.update(
            {
                "date_utc": wall_start.strftime("%Y-%m-%d %H:%M"),
                "machine": machine(),
                "binary": str(args.binary),
                "clients": args.clients,
                "keys": key_count,
                "duration_s": args.duration,
                "elapsed_s": round(elapsed, 1),
                "warmup_s": args.warmup,
                "load_average_start": [round(x, 2) for x in load_start],
                "load_average_end": [round(x, 2) for x in load_end],
                "load1_max": max((s.load1 for s in samples), default=None),
                "generator_cpu_percent_of_one_core": round(cpu_used / elapsed * 100, 1),
                "completed": completed,
                "completed_stream": stats.completed_stream,
                "completed_whole": stats.completed_whole,
                "abandoned_mid_stream": stats.abandoned,
                "requests_per_s": round(completed / elapsed, 1),
                "completion_tokens": stats.completion_tokens,
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens_per_s": round(
                    (stats.completion_tokens + stats.abandoned_tokens) / elapsed, 1),
                "ttft_ms": stats.ttft.summary_ms(),
                "inter_token_ms": stats.itl.summary_ms(),
                "e2e_stream_ms": stats.e2e_stream.summary_ms(),
                "e2e_whole_ms": stats.e2e_whole.summary_ms(),
                "statuses": dict(sorted(stats.statuses.items())),
                "deliberate_shedding": dict(sorted(stats.shed.items())),
                "real_errors": stats.real_errors,
                "error_examples": stats.error_examples,
                "unfinished_at_drain_deadline": stats.unfinished,
                "stale_keepalive_reconnects": STALE_RECONNECTS,
                "burst_sent": stats.burst_sent,
                "burst_ok": stats.burst_ok,
                **{
                    name: memory_report(
                        [(s.t, getattr(s, field)) for s in samples if getattr(s, field)],
                        warm_rel, args.memory_window)
                    for name, field in MEMORY_SERIES
                },
                "engine_pids": sorted(engine_pids),
                "ledger": ledger,
                "export": export,
                "samples_columns": ["t_s", "gateway_rss_kib", "gateway_anon_kib",
                                    "gateway_file_kib", "engine_rss_kib", "ledger_kib", "load1"],
                "samples": [
                    [s.t, s.gateway_kib, s.gateway_anon_kib, s.gateway_file_kib, s.engine_kib,
                     s.ledger_kib, round(s.load1, 2)]
                    for s in samples
                ],
            }
        )
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        appliance.stop()
        return 2
    finally:
        if appliance.proc.poll() is None and "completed" not in report:
            appliance.stop()
    report["up_exit_status"] = appliance.stop()
    log_text = log_path.read_text(errors="replace")
    report["up_log_panics"] = log_text.count("panicked")
    report["up_log_error_lines"] = len(re.findall(r"\bERROR\b", log_text))

    failures = targets(report)
    report["failures"] = failures
    print_report(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    if temporary and not failures:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    elif failures:
        print(f"data folder kept for inspection: {data_dir}")
    return 1 if failures else 0


async def _get(url: str, path: str, key: str) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = Connection(host, int(port))
    try:
        response = await conn.request("GET", path, key, None)
        body = await conn.read_body(response)
        if response.status != 200:
            raise SetupError(f"GET {path}: {response.status} {body[:200]!r}")
        return body
    finally:
        conn.close()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB, Linux {os.uname().release}"


def targets(r: dict) -> list[str]:
    failures = []
    if r["completed"] == 0:
        failures.append("no request completed")
    if r["real_errors"]:
        failures.append(f"real errors: {r['real_errors']}")
    if r["unfinished_at_drain_deadline"]:
        failures.append(f"{r['unfinished_at_drain_deadline']} requests unfinished at the drain deadline")
    for name in ("gateway_rss", "engine_rss"):
        drift = r[name].get("drift_percent")
        if drift is None:
            failures.append(f"{name}: too few samples after warm-up")
        elif abs(drift) > MEMORY_DRIFT_LIMIT_PERCENT:
            failures.append(f"{name} drifted {drift:+.1f}% (limit ±{MEMORY_DRIFT_LIMIT_PERCENT}%)")
    if len(r["engine_pids"]) != 1:
        failures.append(f"engine restarted during the run (pids {r['engine_pids']})")
    ledger = r["ledger"]
    if ledger["completed_missing"] or ledger["completed_not_200"]:
        failures.append(f"ledger: {ledger['completed_missing']} completed requests missing, "
                        f"{ledger['completed_not_200']} recorded with a status other than 200")
    if ledger["abandoned_missing"]:
        failures.append(f"ledger: {ledger['abandoned_missing']} abandoned streams missing")
    if r["export"].get("completed_missing"):
        failures.append(f"export: {r['export']['completed_missing']} completed requests missing")
    if r["export"].get("status") not in (None, 200):
        failures.append(f"export answered {r['export']['status']}")
    shed = r["deliberate_shedding"]
    if not any(k.startswith("burst 429 rate_limit_exceeded") for k in shed):
        failures.append("the low-rpm key was never refused with 429 rate_limit_exceeded")
    if any(k.startswith("user 429 rate_limit_exceeded") for k in shed):
        failures.append("keys without a rate limit got 429 rate_limit_exceeded")
    idle = r.get("gateway_idle_rss_mb_before")
    if idle is None or idle >= GATEWAY_IDLE_RSS_LIMIT_MB:
        failures.append(f"gateway idle RSS {idle} MB (limit < {GATEWAY_IDLE_RSS_LIMIT_MB} MB)")
    if r["up_log_panics"]:
        failures.append(f"{r['up_log_panics']} panics in the `up` log")
    return failures


def print_report(r: dict) -> None:
    def lat(name: str) -> str:
        s = r[name]
        return (f"p50 {s['p50']} / p90 {s['p90']} / p99 {s['p99']} / max {s['max']} ms "
                f"(n={s['count']})")

    def mem(name: str) -> str:
        m = r[name]
        return (f"first {m.get('first_mb')} last {m.get('last_mb')} min {m.get('min_mb')} "
                f"max {m.get('max_mb')} MB; after warm-up {m.get('first_window_mean_mb')} -> "
                f"{m.get('last_window_mean_mb')} MB (drift {m.get('drift_percent')}%, "
                f"band {m.get('band_percent')}%)")

    print()
    print(f"== moebox soak {r['date_utc']} UTC on {r['machine']}")
    print(f"clients {r['clients']} on {r['keys']} keys, {r['elapsed_s']} s "
          f"(warm-up {r['warmup_s']} s); load average start {r['load_average_start']} "
          f"end {r['load_average_end']} max1 {r['load1_max']}; "
          f"generator CPU {r['generator_cpu_percent_of_one_core']}% of one core"
          + (" (SATURATED: may be the bottleneck)"
             if r["generator_cpu_percent_of_one_core"] > GENERATOR_SATURATED_PERCENT else ""))
    print(f"completed {r['completed']} ({r['completed_stream']} streamed, {r['completed_whole']} "
          f"whole), abandoned mid-stream {r['abandoned_mid_stream']}; {r['requests_per_s']} req/s, "
          f"{r['completion_tokens_per_s']} completion tokens/s")
    print(f"TTFT        {lat('ttft_ms')}")
    print(f"inter-token {lat('inter_token_ms')}")
    print(f"e2e stream  {lat('e2e_stream_ms')}")
    print(f"e2e whole   {lat('e2e_whole_ms')}")
    print(f"statuses    {r['statuses']}")
    print(f"shedding    {r['deliberate_shedding']} (burst key: {r['burst_ok']} of "
          f"{r['burst_sent']} served)")
    print(f"real errors {r['real_errors'] or 'none'} (idle keep-alive connections the server "
          f"had closed, reopened: {r['stale_keepalive_reconnects']})")
    for example in r["error_examples"][:5]:
        print(f"  e.g. {example}")
    print(f"gateway RSS {mem('gateway_rss')}")
    print(f"  of which anonymous {mem('gateway_rss_anon')}")
    print(f"  of which file-backed {mem('gateway_rss_file')}")
    print(f"ledger on disk (database + WAL) {mem('ledger_on_disk')}")
    print(f"engine RSS  {mem('engine_rss')}")
    print(f"gateway idle RSS {r.get('gateway_idle_rss_mb_before')} MB before load, "
          f"{r.get('gateway_idle_rss_mb_after')} MB after")
    print(f"ledger      {r['ledger']}")
    print(f"export      {r['export']}")
    print(f"up exit {r['up_exit_status']}, log panics {r['up_log_panics']}, "
          f"ERROR lines {r['up_log_error_lines']}")
    if r["failures"]:
        print("FAIL:")
        for failure in r["failures"]:
            print(f"  - {failure}")
    else:
        print("PASS: every target holds")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
