use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use super::*;
use crate::{
    UnixMillis, UnixSeconds, UsageFilter, telemetry::TelemetrySource, usage::sample_record,
};

fn open(path: &Path) -> Arc<Ledger> {
    Arc::new(Ledger::open(path).expect("ledger"))
}

fn record(n: u64) -> UsageRecord {
    sample_record(n, UnixMillis(1_760_000_000_000 + n as i64), "audit", 1)
}

fn stored_request_ids(ledger: &Ledger) -> std::collections::HashSet<String> {
    let mut ids = std::collections::HashSet::new();
    let mut after = None;
    loop {
        let page = ledger
            .usage_records(
                UnixSeconds(0),
                UnixSeconds(i64::MAX / 1000),
                &UsageFilter::All,
                after,
                crate::MAX_PAGE_RECORDS,
            )
            .expect("page");
        ids.extend(page.records.into_iter().map(|r| r.record.request_id));
        match page.next {
            Some(next) => after = Some(next),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_are_durable_once_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.sqlite");
    let (writer, thread) = UsageWriter::spawn(open(&path), 64).expect("writer");
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..50 {
                loop {
                    match writer.record(record(task * 1_000 + n)).await {
                        Ok(()) => break,
                        // 16 producers and a queue of 64 never fill it, but be exact.
                        Err(WriteError::QueueFull { .. }) => tokio::task::yield_now().await,
                        Err(other) => panic!("{other}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let mut sample = TelemetrySample::new(TelemetrySource::Gpu(0), UnixMillis(1_760_000_000_000));
    sample.energy_joules = Some(3_600.0);
    writer
        .record_telemetry(vec![sample])
        .await
        .expect("telemetry");
    // Invalid records are refused before they are queued.
    let mut bad = record(1);
    bad.status = 42;
    assert!(matches!(
        writer.record(bad).await,
        Err(WriteError::Invalid(_))
    ));
    assert_eq!(writer.records_written(), 800);
    assert!(writer.commits() >= 1 && writer.commits() <= 801);
    drop(writer);
    thread.join();
    let reader = Ledger::open(&path).expect("reopen");
    assert_eq!(stored_request_ids(&reader).len(), 800);
    assert_eq!(reader.latest_telemetry().expect("latest").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_at_once_and_drains_when_the_lock_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.sqlite");
    let (writer, thread) = UsageWriter::spawn(open(&path), 2).expect("writer");
    // Another process holds the write lock: the writer's first batch waits for it.
    let blocker = rusqlite::Connection::open(&path).expect("blocker");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("lock");
    // The caller gives up waiting; its record stays queued and is written all the same.
    let gave_up = tokio::time::timeout(Duration::from_millis(200), writer.record(record(1))).await;
    assert!(gave_up.is_err(), "stored while the lock was held");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while writer.queued() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writer never took the record"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued: Vec<_> = (2..4)
        .map(|n| {
            let writer = writer.clone();
            tokio::spawn(async move { writer.record(record(n)).await })
        })
        .collect();
    while writer.queued() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match writer.record(record(4)).await {
        Err(WriteError::QueueFull { capacity: 2 }) => {}
        other => panic!("expected a full queue, got {other:?}"),
    }
    blocker.execute_batch("COMMIT").expect("unlock");
    for task in queued {
        task.await.expect("task").expect("queued stored");
    }
    drop(writer);
    thread.join();
    let ids = stored_request_ids(&Ledger::open(&path).expect("reopen"));
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains("req-4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_requests_keeps_what_was_committed_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.sqlite");
    let ledger = open(&path);
    let (writer, thread) = UsageWriter::spawn(Arc::clone(&ledger), 16).expect("writer");
    for n in 0..10 {
        writer.record(record(n)).await.expect("stored");
    }
    // Simulate a full disk: the file may not grow past its present size.
    let pages: i64 = {
        let connection = ledger.connection().expect("connection");
        let pages: i64 = connection
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .expect("page count");
        connection
            .pragma_update(None, "max_page_count", pages)
            .expect("limit");
        pages
    };
    let mut acknowledged = 10;
    let mut failure = None;
    for n in 10..20_000 {
        let mut big = record(n);
        big.request_id = format!("{n:0>200}");
        match writer.record(big).await {
            Ok(()) => acknowledged += 1,
            Err(error) => {
                failure = Some((n, error));
                break;
            }
        }
    }
    let (failed_at, error) = failure.expect("the database filled up");
    assert!(error.is_disk_full(), "{error}");
    // Still full: the next request fails too, the writer is still there.
    assert!(
        writer
            .record(record(50_000))
            .await
            .expect_err("still full")
            .is_disk_full()
    );
    // Space returns: writing resumes by itself.
    ledger
        .connection()
        .expect("connection")
        .pragma_update(None, "max_page_count", pages * 100)
        .expect("unlimit");
    writer.record(record(60_000)).await.expect("stored again");
    assert_eq!(writer.failed_batches(), 2);
    drop(writer);
    thread.join();
    let ids = stored_request_ids(&Ledger::open(&path).expect("reopen"));
    assert_eq!(ids.len(), acknowledged + 1, "failed at {failed_at}");
    assert!(!ids.contains(&format!("{failed_at:0>200}")));
    assert!(!ids.contains("req-50000"));
    assert!(ids.contains("req-60000") && ids.contains("req-0"));
}

const CHILD_DATABASE: &str = "MOEBOX_LEDGER_DURABILITY_CHILD_DATABASE";

/// The child half of [`acknowledged_records_survive_kill_9`]: does nothing unless that test
/// started this binary with the database's path in [`CHILD_DATABASE`]. Then writes records
/// from 32 tasks as fast as it can and prints `ack <request id>` for each acknowledged one,
/// until killed.
#[test]
fn durability_child() {
    let Some(path) = std::env::var_os(CHILD_DATABASE) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let ledger = open(Path::new(&path));
        let (writer, _thread) =
            UsageWriter::spawn(ledger, DEFAULT_WRITER_QUEUE_CAPACITY).expect("writer");
        let tasks: Vec<_> = (0..32u64)
            .map(|task| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for n in 0..1_000_000u64 {
                        let mut record = record(n);
                        record.request_id = format!("child-{task}-{n}");
                        if writer.record(record.clone()).await.is_ok() {
                            let mut stdout = std::io::stdout().lock();
                            writeln!(stdout, "ack {}", record.request_id).expect("stdout");
                            stdout.flush().expect("flush");
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
}

/// Every record the writer acknowledged is in the database after its process is killed with
/// SIGKILL in the middle of a burst: the acknowledgement comes after the commit.
#[test]
fn acknowledged_records_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("moebox.sqlite");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "writer::tests::durability_child", "--nocapture"])
        .env(CHILD_DATABASE, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 3_000 {
        let line = lines
            .next()
            .expect("the child stopped before 3,000 acknowledgements")
            .expect("line");
        if let Some(id) = line.strip_prefix("ack ") {
            acknowledged.push(id.to_owned());
        }
    }
    // SIGKILL in the middle of the burst: no destructor, no flush, no checkpoint.
    child.kill().expect("kill -9");
    // Acknowledgements printed before it died are still in the pipe.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("ack ") {
            acknowledged.push(id.to_owned());
        }
    }
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child was killed, not finished");
    let ledger = Ledger::open(&path).expect("reopen after kill -9");
    let integrity: String = ledger
        .connection()
        .expect("connection")
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity");
    assert_eq!(integrity, "ok");
    let stored = stored_request_ids(&ledger);
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged records lost, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        missing.first()
    );
    // More may be stored than acknowledged (committed, killed before printing), never fewer.
    assert!(stored.len() >= acknowledged.len());
}
