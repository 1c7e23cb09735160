//! The writer: one thread per process that makes usage records (and telemetry samples)
//! durable, with group commit.
//!
//! Requests hand their record to [`UsageWriter::record`], which puts it on a bounded queue
//! (full → [`WriteError::QueueFull`] at once, which the gateway answers 503: never an
//! unbounded backlog) and resolves once the transaction holding it has committed with
//! `synchronous = FULL`, so the gateway can make a request's record durable before it sends
//! the response's last byte. The thread takes whatever is queued, writes it in one
//! transaction and acknowledges every record in it: under load one fsync covers many
//! requests.
//!
//! A database error (a full disk, an I/O error) rolls that transaction back and is returned
//! to every request in it; the thread keeps running and the next batch tries again, so
//! writing resumes by itself when space returns, and nothing committed before is touched.
//! Records are validated before they are queued, so one bad record can never fail a batch.
//! Dropping the future after the record was queued does not cancel the write.
//!
//! It is a thread rather than a task because SQLite blocks (the fsync above all); give it a
//! [`Ledger`] of its own (a second [`Ledger::open`] of the same file) so that a commit never
//! holds up key checks on the gateway's other connection.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{mpsc, oneshot};

use crate::{Ledger, LedgerError, TelemetrySample, UsageRecord};

/// `ledger.writer_queue`: records waiting to be written, at most. At a few hundred requests
/// a second and a commit every few milliseconds it is never close to full; it fills only
/// when the disk stalls, and then callers get 503 rather than memory growing.
pub const DEFAULT_WRITER_QUEUE_CAPACITY: usize = 4_096;
/// Largest queue accepted.
pub const MAX_WRITER_QUEUE_CAPACITY: usize = 1 << 20;

/// Why a record was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the ledger's write queue is full ({capacity} records waiting); try again shortly")]
    QueueFull { capacity: usize },
    #[error("the ledger writer has stopped")]
    Stopped,
    #[error("invalid usage record: {0}")]
    Invalid(Arc<LedgerError>),
    #[error("the ledger could not store the record: {0}")]
    Storage(Arc<LedgerError>),
}

impl WriteError {
    /// Whether the database's disk is full (the batch was rolled back; retrying later works).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Storage(error) if error.is_disk_full())
    }
}

type Ack = oneshot::Sender<Result<(), WriteError>>;

#[derive(Debug)]
enum Job {
    Usage(UsageRecord, Ack),
    Telemetry(Vec<TelemetrySample>, Ack),
}

/// The handle requests write through; cheap to clone. The thread stops once every clone is
/// dropped and the queue is drained.
#[derive(Debug, Clone)]
pub struct UsageWriter {
    sender: mpsc::Sender<Job>,
    capacity: usize,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    commits: AtomicU64,
    records: AtomicU64,
    failed_batches: AtomicU64,
}

/// The writer thread; [`WriterThread::join`] waits for it to drain and stop.
#[derive(Debug)]
pub struct WriterThread(std::thread::JoinHandle<()>);

impl WriterThread {
    /// Waits until every [`UsageWriter`] clone is dropped and the queue is written.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the ledger writer thread panicked");
        }
    }
}

/// Opens the database at `path` twice, as the gateway uses it: one connection for key checks
/// and reads, and the writer thread on the other, so a commit's fsync never holds up a key
/// check.
pub fn open_with_writer(
    path: &std::path::Path,
    capacity: usize,
) -> Result<(Arc<Ledger>, UsageWriter, WriterThread), LedgerError> {
    let reads = Arc::new(Ledger::open(path)?);
    let writes = Arc::new(Ledger::open(path)?);
    let (writer, thread) = UsageWriter::spawn(writes, capacity)?;
    Ok((reads, writer, thread))
}

impl UsageWriter {
    /// Starts the process's writer thread on `ledger` with a queue of `capacity` records
    /// (1..=[`MAX_WRITER_QUEUE_CAPACITY`]).
    pub fn spawn(
        ledger: Arc<Ledger>,
        capacity: usize,
    ) -> Result<(Self, WriterThread), LedgerError> {
        if !(1..=MAX_WRITER_QUEUE_CAPACITY).contains(&capacity) {
            return Err(LedgerError::InvalidField {
                field: "writer_queue",
                message: format!("must be 1..={MAX_WRITER_QUEUE_CAPACITY}, got {capacity}"),
            });
        }
        let (sender, receiver) = mpsc::channel(capacity);
        let stats = Arc::new(Stats::default());
        let thread = std::thread::Builder::new()
            .name("ledger-writer".to_owned())
            .spawn({
                let stats = Arc::clone(&stats);
                move || run(&ledger, receiver, capacity, &stats)
            })
            .map_err(LedgerError::WriterThread)?;
        Ok((
            Self {
                sender,
                capacity,
                stats,
            },
            WriterThread(thread),
        ))
    }

    /// Queues `record` and returns once it is durable (committed, fsynced). Fails at once
    /// with [`WriteError::QueueFull`] when the queue is full and [`WriteError::Invalid`] when
    /// a field is out of range; [`WriteError::Storage`] when the database refused the batch.
    pub async fn record(&self, record: UsageRecord) -> Result<(), WriteError> {
        record
            .validate()
            .map_err(|e| WriteError::Invalid(Arc::new(e)))?;
        self.submit(|ack| Job::Usage(record, ack)).await
    }

    /// Queues telemetry samples (one queue slot for the lot) and returns once they are
    /// durable; samples already stored are skipped.
    pub async fn record_telemetry(&self, samples: Vec<TelemetrySample>) -> Result<(), WriteError> {
        for sample in &samples {
            sample
                .validate()
                .map_err(|e| WriteError::Invalid(Arc::new(e)))?;
        }
        self.submit(|ack| Job::Telemetry(samples, ack)).await
    }

    /// Records waiting to be written now (for `/metrics`).
    pub fn queued(&self) -> usize {
        self.capacity.saturating_sub(self.sender.capacity())
    }

    /// Transactions committed so far (`records_written / commits` is the mean group size).
    pub fn commits(&self) -> u64 {
        self.stats.commits.load(Ordering::Relaxed)
    }

    /// Usage records committed so far.
    pub fn records_written(&self) -> u64 {
        self.stats.records.load(Ordering::Relaxed)
    }

    /// Batches rolled back on a database error so far.
    pub fn failed_batches(&self) -> u64 {
        self.stats.failed_batches.load(Ordering::Relaxed)
    }

    async fn submit(&self, job: impl FnOnce(Ack) -> Job) -> Result<(), WriteError> {
        let (ack, done) = oneshot::channel();
        self.sender
            .try_send(job(ack))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => WriteError::QueueFull {
                    capacity: self.capacity,
                },
                mpsc::error::TrySendError::Closed(_) => WriteError::Stopped,
            })?;
        done.await.unwrap_or(Err(WriteError::Stopped))
    }
}

fn run(ledger: &Ledger, mut receiver: mpsc::Receiver<Job>, max_batch: usize, stats: &Stats) {
    let mut jobs = Vec::new();
    while let Some(job) = receiver.blocking_recv() {
        jobs.push(job);
        while jobs.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut records = Vec::new();
        let mut samples = Vec::new();
        let mut acks = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            match job {
                Job::Usage(record, ack) => {
                    records.push(record);
                    acks.push(ack);
                }
                Job::Telemetry(batch, ack) => {
                    samples.extend(batch);
                    acks.push(ack);
                }
            }
        }
        let result = ledger.write_batch(&records, &samples);
        match &result {
            Ok(_) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .records
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        let result = result.map_err(|error| {
            tracing::error!(
                %error,
                records = records.len(),
                samples = samples.len(),
                "ledger write failed; the batch was rolled back and its requests told"
            );
            WriteError::Storage(Arc::new(error))
        });
        for ack in acks {
            // The request may have gone away; its record is written all the same.
            let _ = ack.send(result.clone().map(|_| ()));
        }
    }
}

#[cfg(test)]
mod tests;
