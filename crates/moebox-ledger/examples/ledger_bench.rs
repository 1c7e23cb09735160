//! Ledger benchmark: write throughput through the one writer (group commit, synchronous =
//! FULL), database size before and after compaction, and query latency.
//!
//! ```text
//! cargo run -p moebox-ledger --example ledger_bench -- [--records N] [--producers P] [--days D] [--dir DIR]
//! ```
//!
//! N records (default 1,000,000) spread evenly over D days (default 730) before "now", from
//! P concurrent producers (default 256) that each await their record's durability like a
//! request does, 200 keys in 12 teams.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use moebox_ledger::{
    Ledger, Retention, Step, UnixMillis, UnixSeconds, UsageFilter, UsageRecord, UsageWriter,
    WriteError,
};

struct Options {
    records: u64,
    producers: u64,
    days: i64,
    dir: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        records: 1_000_000,
        producers: 256,
        days: 730,
        dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--records" => options.records = number()?.max(1),
            "--producers" => options.producers = number()?.max(1),
            "--days" => options.days = number()?.max(1) as i64,
            "--dir" => options.dir = Some(PathBuf::from(&value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

fn size_on_disk(path: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(name).map_or(0, |m| m.len())
        })
        .sum()
}

/// Bytes this process has caused to be written to storage (Linux), to see the WAL's volume.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|line| line.strip_prefix("write_bytes: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn record(n: u64, at_ms: i64) -> UsageRecord {
    let key = (n * 7919 % 200) as i64 + 1;
    UsageRecord {
        request_id: format!("req_{n:024x}"),
        started_at: UnixMillis(at_ms),
        ended_at: UnixMillis(at_ms + 2_000 + (n % 5_000) as i64),
        key_id: key,
        team: format!("team-{:02}", key % 12),
        model: if n.is_multiple_of(4) {
            "gpt-oss-20b"
        } else {
            "qwen3.5-35b-a3b"
        }
        .to_owned(),
        endpoint: "/v1/chat/completions".to_owned(),
        prompt_tokens: 200 + n % 3_000,
        completion_tokens: 50 + n % 700,
        time_to_first_token_ms: Some(60 + n % 400),
        latency_ms: 2_000 + n % 5_000,
        status: if n.is_multiple_of(97) { 503 } else { 200 },
        engine: Some(format!("gpu{}", n % 2)),
        finish_reason: Some("stop".to_owned()),
    }
}

fn time<T>(runs: u32, mut f: impl FnMut() -> T) -> (T, Duration) {
    let mut result = f();
    let start = Instant::now();
    for _ in 0..runs {
        result = f();
    }
    (result, start.elapsed() / runs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let scratch = tempfile::tempdir()?;
    let dir = options
        .dir
        .clone()
        .unwrap_or_else(|| scratch.path().to_owned());
    let path = dir.join("ledger-bench.sqlite");
    let _ = std::fs::remove_file(&path);
    let now = UnixSeconds::now();
    let span_ms = options.days * 86_400_000;
    let first_ms = now.0 * 1000 - span_ms;
    let step_ms = (span_ms / options.records as i64).max(1);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let writer_ledger = Arc::new(Ledger::open(&path)?);
    let (writer, thread) =
        UsageWriter::spawn(writer_ledger, moebox_ledger::DEFAULT_WRITER_QUEUE_CAPACITY)?;
    let written_before = written_bytes();
    let started = Instant::now();
    let full = runtime.block_on(async {
        let mut tasks = Vec::new();
        for producer in 0..options.producers {
            let writer = writer.clone();
            let (records, producers) = (options.records, options.producers);
            tasks.push(tokio::spawn(async move {
                let mut full = 0u64;
                let mut n = producer;
                while n < records {
                    match writer
                        .record(record(n, first_ms + n as i64 * step_ms))
                        .await
                    {
                        Ok(()) => n += producers,
                        Err(WriteError::QueueFull { .. }) => {
                            full += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(error) => panic!("{error}"),
                    }
                }
                full
            }));
        }
        let mut full = 0;
        for task in tasks {
            full += task.await.unwrap_or(0);
        }
        full
    });
    let elapsed = started.elapsed();
    let commits = writer.commits();
    let written = writer.records_written();
    drop(writer);
    thread.join();
    let io = written_bytes().saturating_sub(written_before);
    println!(
        "write: {written} records from {} producers in {:.2} s = {:.0} records/s; \
         {commits} commits (mean group {:.1} records); queue-full refusals {full}; \
         {} written to storage ({:.0} bytes/record)",
        options.producers,
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64(),
        written as f64 / commits.max(1) as f64,
        mib(io),
        io as f64 / written.max(1) as f64,
    );

    let ledger = Ledger::open(&path)?;
    // Checkpoint so the size is the database's, not the WAL's.
    let before = size_on_disk(&path);
    let retention = Retention::default();
    let start = Instant::now();
    let compaction = ledger.compact(now, &retention)?;
    println!(
        "size: {} before compaction, {} after ({:?} in {:.2} s; retention {:?})",
        mib(before),
        mib(size_on_disk(&path)),
        compaction,
        start.elapsed().as_secs_f64(),
        retention,
    );

    // The last whole 30 days, and a month inside the raw window with unaligned bounds.
    let month_end = UnixSeconds(now.0 - now.0.rem_euclid(86_400));
    let month_start = UnixSeconds(month_end.0 - 30 * 86_400);
    let (teams, latency) = time(100, || ledger.usage_by_team(month_start, month_end));
    let teams = teams?;
    let requests: u64 = teams.iter().map(|t| t.totals.requests).sum();
    println!(
        "query: per-team totals for 30 days ({} teams, {requests} requests): {:.3} ms",
        teams.len(),
        latency.as_secs_f64() * 1000.0
    );
    let (odd_from, odd_to) = (
        UnixSeconds(month_start.0 - 3_599),
        UnixSeconds(month_end.0 - 1_234),
    );
    let (teams, latency) = time(20, || ledger.usage_by_team(odd_from, odd_to));
    println!(
        "query: per-team totals for 30 days, bounds inside hours ({} teams): {:.3} ms",
        teams?.len(),
        latency.as_secs_f64() * 1000.0
    );
    let (used, latency) = time(1_000, || {
        ledger.tokens_used_by_key_since(17, UnixSeconds(month_start.0 + 86_400 + 3_661))
    });
    println!(
        "query: tokens_used_by_key_since (key 17, {} tokens): {:.3} ms",
        used?,
        latency.as_secs_f64() * 1000.0
    );
    let (series, latency) = time(20, || {
        ledger.usage_series(
            UnixSeconds(now.0 - 365 * 86_400),
            now,
            Step::Day,
            &UsageFilter::All,
        )
    });
    println!(
        "query: daily series over a year ({} points): {:.3} ms",
        series?.len(),
        latency.as_secs_f64() * 1000.0
    );
    Ok(())
}
