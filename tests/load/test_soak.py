#!/usr/bin/env python3
"""Unit tests for soak.py's parts that decide pass or fail: the latency histogram, the memory
drift figures, the HTTP/1.1 chunked reader and the targets. `python3 tests/load/test_soak.py`"""

import asyncio
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import soak  # noqa: E402


class HistogramTest(unittest.TestCase):
    def test_quantiles_within_bucket_width(self):
        h = soak.Histogram()
        for ms in range(1, 1001):
            h.add(ms / 1000)
        for q, want in ((0.5, 0.5), (0.9, 0.9), (0.99, 0.99)):
            got = h.quantile(q)
            self.assertGreaterEqual(got, want * 0.999)
            self.assertLessEqual(got, want * 1.03)
        self.assertEqual(h.quantile(1.0), 1.0)
        self.assertEqual(h.summary_ms()["count"], 1000)

    def test_empty(self):
        self.assertIsNone(soak.Histogram().quantile(0.5))
        self.assertIsNone(soak.Histogram().summary_ms()["p99"])


class MemoryReportTest(unittest.TestCase):
    def test_flat_after_warmup(self):
        # Grows during warm-up, then flat: drift 0 whatever the warm-up did.
        values = [(t, 1000 + t * 100) for t in range(10)] + [(t, 2000) for t in range(10, 400)]
        r = soak.memory_report(values, warm_until=10, window=60)
        self.assertEqual(r["drift_percent"], 0.0)
        self.assertEqual(r["first_mb"], round(1000 / 1024, 1))

    def test_leak_shows_as_drift(self):
        values = [(t, 10_000 + t * 10) for t in range(0, 600)]
        r = soak.memory_report(values, warm_until=60, window=60)
        self.assertGreater(r["drift_percent"], 10)

    def test_too_few_samples(self):
        self.assertNotIn("drift_percent", soak.memory_report([(0, 1), (1, 1)], 0, 60))


class ChunkedReaderTest(unittest.TestCase):
    def test_reads_chunks_and_keeps_connection(self):
        async def run():
            async def serve(reader, writer):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-request-id: r1\r\n\r\n"
                    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                )
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
                writer.close()

            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            conn = soak.Connection("127.0.0.1", port)
            first = await conn.request("GET", "/", "k", None)
            body = await conn.read_body(first)
            second = await conn.request("GET", "/", "k", None)
            second_body = await conn.read_body(second)
            conn.close()
            server.close()
            return first, body, second, second_body

        first, body, second, second_body = asyncio.run(run())
        self.assertEqual((first.status, first.headers["x-request-id"]), (200, "r1"))
        self.assertEqual(body, b"hello world")
        self.assertEqual((second.status, second_body), (429, b"{}"))


def passing_report():
    flat = {"drift_percent": 1.0}
    return {
        "completed": 10,
        "real_errors": {},
        "unfinished_at_drain_deadline": 0,
        "gateway_rss": flat,
        "engine_rss": flat,
        "engine_pids": [42],
        "ledger": {"completed_missing": 0, "completed_not_200": 0, "abandoned_missing": 0},
        "export": {"status": 200, "completed_missing": 0},
        "deliberate_shedding": {"burst 429 rate_limit_exceeded": 3, "user 503 overloaded": 2},
        "gateway_idle_rss_mb_before": 12.0,
        "up_log_panics": 0,
    }


class TargetsTest(unittest.TestCase):
    def test_passing(self):
        self.assertEqual(soak.targets(passing_report()), [])

    def test_each_target_can_fail(self):
        cases = {
            "real errors": ("real_errors", {"HTTP 500 internal": 1}),
            "gateway_rss drifted": ("gateway_rss", {"drift_percent": 12.5}),
            "engine_rss drifted": ("engine_rss", {"drift_percent": -11.0}),
            "engine restarted": ("engine_pids", [42, 43]),
            "completed requests missing": (
                "ledger",
                {"completed_missing": 1, "completed_not_200": 0, "abandoned_missing": 0},
            ),
            "never refused": ("deliberate_shedding", {"user 503 overloaded": 2}),
            "idle RSS": ("gateway_idle_rss_mb_before", 31.0),
            "panics": ("up_log_panics", 1),
        }
        for expect, (name, value) in cases.items():
            report = passing_report()
            report[name] = value
            failures = soak.targets(report)
            self.assertTrue(any(expect in f for f in failures), (expect, failures))


if __name__ == "__main__":
    unittest.main()
