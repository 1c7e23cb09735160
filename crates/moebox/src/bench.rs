//! `moebox bench`: throughput and latency of the continuous-batching scheduler.
//!
//! Loads a model once, starts the scheduler with at least as many rows as the largest
//! concurrency level, then measures, in one process:
//!
//! - **levels**: for each concurrency `c`, `c` greedy requests of `--max-tokens` each are
//!   submitted at once (one thread per request: the threads wait at a barrier, then each submits
//!   its own request and collects its events). Per request: time to first token (submit → first
//!   `Token` event) and the times between tokens; in all: generated tokens / wall time from the
//!   first submit to the last `Done`.
//! - **short under load**: `--long-requests` long requests decode; once every one has its first
//!   token, short requests ("probes") are submitted one after another and their time to first
//!   token is compared with the same probe on the idle engine.
//! - **memory**: `VmRSS` before ONNX Runtime is loaded, after the model is loaded, after the
//!   scheduler allocated its KV cache and ran its warm-up, and the peak (`VmHWM`) at the end,
//!   against the weights' size on disk and the KV cache's bytes.
//!
//! Nothing here asserts on time: it measures and reports. Every level also reports how much CPU
//! other processes took while it ran (`/proc/stat` busy time less this process's own), so a
//! driver script can redo runs that a concurrent build disturbed.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use moebox_engine::{
    model::{Model, SessionOptions},
    scheduler::{EngineHandle, SchedulerLimits, start},
};
use moebox_protocol::{Event, GenerateRequest, Prompt};
use serde::{Deserialize, Serialize};

/// Prompts used when no `--prompts` file is given (raw text, no chat template).
const DEFAULT_PROMPTS: [&str; 4] = [
    "    return a + b",
    "Once upon a time there was a little robot who wanted to learn how to count",
    "Revenue increased by 12 percent, while operating expenses decreased slightly compared to last year.",
    "Tax filings are due on the fifteenth of April; late submissions incur a penalty.",
];

/// Linux reports CPU times in `/proc` in USER_HZ, which is 100 on every architecture we build.
const USER_HZ: f64 = 100.0;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// onnxruntime-genai model folder.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_name = "C,C,...", value_delimiter = ',', default_values_t = [1, 4, 16, 32])]
    concurrency: Vec<usize>,
    /// JSON list of prompts: strings (raw text, tokenized by the engine) or lists of token ids.
    /// Requests take them in turn. Default: four built-in raw prompts.
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,
    /// Completion length of every request in the levels (greedy; shorter only at an EOS).
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_tokens: u32,
    /// Timed repetitions of every level and of the short-under-load scenario.
    #[arg(long, value_name = "R", default_value_t = 1)]
    reps: usize,
    /// Untimed rounds per level first (each: `c` requests of min(N, c + 16) tokens, so that
    /// ONNX Runtime has seen every batch size up to `c`).
    #[arg(long, value_name = "W", default_value_t = 1)]
    warmup: usize,
    /// Which scenarios to run, comma-separated: `levels`, `short`.
    #[arg(long, value_name = "S,...", value_delimiter = ',', default_values_t = [Scenario::Levels, Scenario::Short])]
    scenarios: Vec<Scenario>,
    /// ONNX Runtime intra-op threads; default: the config's `engine.intra_op_threads`.
    #[arg(long, value_name = "T")]
    intra_op_threads: Option<usize>,
    /// Configuration file, for the ONNX Runtime library and engine settings.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Execution provider; default cpu (the config's `engine.execution_provider` with --config).
    #[arg(long, value_name = "cpu|cuda")]
    execution_provider: Option<String>,
    /// CUDA device ordinal.
    #[arg(long, value_name = "N", default_value_t = 0)]
    gpu: i32,
    /// KV budget in positions; default: row capacity × the rows the scenarios need.
    #[arg(long, value_name = "X")]
    kv_budget_tokens: Option<usize>,
    /// Positions one sequence may hold (the row capacity); default: the longest prompt plus the
    /// longest completion, rounded up to a multiple of 64.
    #[arg(long, value_name = "Y")]
    max_sequence_tokens: Option<usize>,
    /// Prompt tokens prefilled per scheduler step; default: the config's
    /// `engine.prefill_chunk_tokens`.
    #[arg(long, value_name = "Z")]
    prefill_chunk_tokens: Option<usize>,
    /// Short-under-load: long requests decoding while the probes arrive.
    #[arg(long, value_name = "N", default_value_t = 15)]
    long_requests: usize,
    /// Short-under-load: completion length of each long request.
    #[arg(long, value_name = "N", default_value_t = 256)]
    long_max_tokens: u32,
    /// Short-under-load: probes per repetition, submitted one after another at evenly spread
    /// phases of a scheduler step (probe k waits (k + 0.5) / probes of a step after the previous
    /// one ends); each is also run on the idle engine.
    #[arg(long, value_name = "N", default_value_t = 5)]
    short_probes: usize,
    /// Short-under-load: completion length of a probe.
    #[arg(long, value_name = "N", default_value_t = 8)]
    short_max_tokens: u32,
    /// Short-under-load: the probe's prompt (raw text); default: the shortest prompt of the set.
    #[arg(long, value_name = "TEXT")]
    short_prompt: Option<String>,
    /// Print one JSON document (every request's timings and ids) instead of the tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Levels,
    Short,
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Levels => "levels",
            Self::Short => "short",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PromptEntry {
    Text(String),
    Tokens(Vec<u32>),
}

impl PromptEntry {
    fn prompt(&self) -> Prompt {
        match self {
            Self::Text(text) => Prompt::Text(text.clone()),
            Self::Tokens(ids) => Prompt::Tokens(ids.clone()),
        }
    }
}

/// What one request saw, times in seconds from the level's first submit.
#[derive(Debug, Clone, Serialize)]
struct RequestRecord {
    /// The request's number within its round.
    request_index: usize,
    prompt_index: usize,
    prompt_tokens: u32,
    submitted_s: f64,
    /// Submit → first `Token` event.
    ttft_s: f64,
    /// Arrival of every `Token` event that carried ids (one per generated token).
    token_times_s: Vec<f64>,
    done_s: f64,
    generated: usize,
    finish_reason: String,
    output_ids: Vec<u32>,
}

/// Order statistics of a sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Summary {
    n: usize,
    mean: f64,
    p50: f64,
    p95: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            n: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: percentile(&sorted, 0.50),
            p95: percentile(&sorted, 0.95),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// Linear interpolation between closest ranks (numpy's default), `sorted` ascending, non-empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// One timed round of one concurrency level.
#[derive(Debug, Clone, Serialize)]
struct LevelRun {
    concurrency: usize,
    rep: usize,
    /// First submit → last `Done`.
    wall_s: f64,
    generated: usize,
    aggregate_tokens_per_s: f64,
    ttft_s: Summary,
    /// Time between consecutive tokens of a request, over all requests.
    inter_token_s: Summary,
    /// This process's CPU time (all threads) over the wall time: cores kept busy.
    cpu_cores_used: f64,
    /// Share of the machine's CPUs other processes took meanwhile.
    other_cpu_share: f64,
    /// CPU seconds other processes took meanwhile (`/proc/stat` counts in 10 ms ticks).
    other_cpu_s: f64,
    requests: Vec<RequestRecord>,
}

#[derive(Debug, Clone, Serialize)]
struct ShortRun {
    rep: usize,
    /// TTFT of each probe on the idle engine.
    unloaded_ttft_s: Vec<f64>,
    /// TTFT of each probe while the long requests decode.
    loaded_ttft_s: Vec<f64>,
    /// Long requests still decoding when each probe got its first token (should be all).
    long_running_at_probe: Vec<usize>,
    /// Time between tokens of the long requests while the probes ran.
    long_inter_token_s: Summary,
    /// Wall time of the loaded part (long requests submitted → all threads joined).
    wall_s: f64,
    other_cpu_share: f64,
    other_cpu_s: f64,
}

#[derive(Debug, Clone, Serialize)]
struct ShortSummary {
    long_requests: usize,
    long_max_tokens: u32,
    probe_prompt_tokens: usize,
    probe_max_tokens: u32,
    unloaded_ttft_s: Summary,
    loaded_ttft_s: Summary,
    /// Median loaded / median unloaded.
    ratio: f64,
    runs: Vec<ShortRun>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Memory {
    /// `VmRSS` at start, before ONNX Runtime is loaded.
    rss_start_bytes: u64,
    /// After ONNX Runtime is loaded, before the model.
    rss_runtime_bytes: u64,
    /// After the model (session) is loaded.
    rss_model_bytes: u64,
    /// After the scheduler allocated the KV cache and ran its warm-up step.
    rss_kv_bytes: u64,
    /// `VmRSS` at the end, the model still loaded.
    rss_end_bytes: u64,
    /// `VmHWM` at the end: the peak.
    peak_bytes: u64,
    /// `RssAnon` and `RssFile` at the end: heap and anonymous maps vs mapped files (ONNX
    /// Runtime maps the external weights file, so the weights count here).
    rss_anon_end_bytes: u64,
    rss_file_end_bytes: u64,
    /// `model.onnx` and its external data files on disk.
    weights_bytes: u64,
    /// The KV cache as allocated (every row at full capacity).
    kv_cache_bytes: u64,
    /// Peak less weights and KV cache.
    peak_beyond_weights_and_kv_bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
struct Setup {
    model: String,
    execution_provider: String,
    intra_op_threads: usize,
    rows: usize,
    row_capacity: usize,
    kv_budget_tokens: usize,
    prefill_chunk_tokens: usize,
    max_tokens: u32,
    prompts: usize,
    prompt_tokens: Vec<usize>,
    reps: usize,
    warmup: usize,
    load_s: f64,
    start_s: f64,
    cpus: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    setup: Setup,
    memory: Memory,
    levels: Vec<LevelRun>,
    short_under_load: Option<ShortSummary>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rss_start = read_status_kb("VmRSS")?;
    let (config, execution_provider) = crate::generate::config_and_provider(
        args.config.as_deref(),
        args.execution_provider.as_deref(),
    )?;
    if args.concurrency.contains(&0) {
        bail!("--concurrency: every level must be at least 1");
    }
    let run_levels = args.scenarios.contains(&Scenario::Levels) && !args.concurrency.is_empty();
    let run_short = args.scenarios.contains(&Scenario::Short) && args.long_requests > 0;
    if run_short && args.short_probes == 0 {
        bail!("--short-probes must be at least 1");
    }

    let prompts = load_prompts(args.prompts.as_deref())?;
    let intra_op_threads = args
        .intra_op_threads
        .unwrap_or(config.engine.intra_op_threads);

    let runtime = moebox_engine::runtime::load(config.onnxruntime.library.as_deref())?;
    let rss_runtime = read_status_kb("VmRSS")?;
    let options = SessionOptions {
        execution_provider,
        device_id: args.gpu,
        allow_cpu_fallback: config.engine.allow_cpu_fallback,
        intra_op_threads,
        cuda: config.engine.cuda.clone(),
    };
    let load_start = Instant::now();
    let model = Model::load(&runtime, &args.model, &options)
        .with_context(|| format!("cannot load the model folder {}", args.model.display()))?;
    let load_s = load_start.elapsed().as_secs_f64();
    let rss_model = read_status_kb("VmRSS")?;

    // Token counts decide the row capacity; the engine tokenizes text prompts the same way.
    let prompt_tokens: Vec<usize> = prompts
        .iter()
        .map(|p| match p {
            PromptEntry::Text(text) => model.tokenizer.encode(text).map(|ids| ids.len()),
            PromptEntry::Tokens(ids) => Ok(ids.len()),
        })
        .collect::<Result<_, _>>()?;
    let short_prompt = match &args.short_prompt {
        Some(text) => PromptEntry::Text(text.clone()),
        None => {
            let shortest = (0..prompts.len())
                .min_by_key(|&i| prompt_tokens[i])
                .context("the prompt list is empty")?;
            prompts[shortest].clone()
        }
    };
    let short_prompt_tokens = match &short_prompt {
        PromptEntry::Text(text) => model.tokenizer.encode(text)?.len(),
        PromptEntry::Tokens(ids) => ids.len(),
    };
    let longest_prompt = prompt_tokens
        .iter()
        .copied()
        .chain([short_prompt_tokens])
        .max()
        .unwrap_or(0);
    let mut longest_completion = 0;
    if run_levels {
        longest_completion = args.max_tokens;
    }
    if run_short {
        longest_completion = longest_completion
            .max(args.long_max_tokens)
            .max(args.short_max_tokens);
    }
    let context_length = model.spec.context_length;
    let row_capacity = args
        .max_sequence_tokens
        .unwrap_or_else(|| (longest_prompt + longest_completion as usize).div_ceil(64) * 64)
        .clamp(2, context_length);
    let mut rows_needed = 1;
    if run_levels {
        rows_needed = rows_needed.max(args.concurrency.iter().copied().max().unwrap_or(1));
    }
    if run_short {
        rows_needed = rows_needed.max(args.long_requests + 1);
    }
    let kv_budget_tokens = args.kv_budget_tokens.unwrap_or(rows_needed * row_capacity);
    let limits = SchedulerLimits {
        kv_budget_tokens,
        row_capacity,
        // Never refuse a request of the benchmark for a full queue.
        max_waiting: config
            .engine
            .max_waiting
            .max(rows_needed + args.short_probes),
        prefill_chunk_tokens: args
            .prefill_chunk_tokens
            .unwrap_or(config.engine.prefill_chunk_tokens),
        default_max_tokens: args.max_tokens,
    };
    let rows = limits.rows();
    if rows < rows_needed {
        eprintln!(
            "moebox bench: warning: the KV budget holds {rows} rows of {row_capacity} positions; \
             the scenarios need {rows_needed}: the rest wait in the queue"
        );
    }
    // Bytes of one row at this capacity, from a one-row cache (the cache's size is linear in
    // its rows); freed before the scheduler allocates its own.
    let kv_cache_bytes = model.new_batch_cache(1, row_capacity)?.bytes() as u64 * rows as u64;
    let weights_bytes = weights_on_disk(&args.model.join(&model.spec.filename))?;
    let prefill_chunk_tokens = limits.prefill_chunk_tokens;

    let start_begin = Instant::now();
    let engine = start(model, limits, Box::new(|| {}))
        .map_err(|e| anyhow::anyhow!("cannot start the scheduler: {e}"))?;
    let start_s = start_begin.elapsed().as_secs_f64();
    let rss_kv = read_status_kb("VmRSS")?;

    let mut levels = Vec::new();
    if run_levels {
        for &c in &args.concurrency {
            for _ in 0..args.warmup {
                let warm_tokens = args.max_tokens.min(c as u32 + 16);
                run_level(&engine, &prompts, c, warm_tokens, 0)?;
            }
            for rep in 0..args.reps {
                let run = run_level(&engine, &prompts, c, args.max_tokens, rep)?;
                if !args.json {
                    eprintln!(
                        "moebox bench: c={c} rep {rep}: {:.1} tok/s, TTFT p50 {:.1} ms p95 {:.1} ms, others' CPU {:.0}%",
                        run.aggregate_tokens_per_s,
                        run.ttft_s.p50 * 1e3,
                        run.ttft_s.p95 * 1e3,
                        run.other_cpu_share * 100.0
                    );
                }
                levels.push(run);
            }
        }
    }

    let short_under_load = if run_short {
        let mut runs = Vec::new();
        for rep in 0..args.reps {
            let run = run_short_under_load(&engine, &prompts, &short_prompt, &args, rep)?;
            if !args.json {
                eprintln!(
                    "moebox bench: short under load rep {rep}: TTFT unloaded {:.1} ms, loaded {:.1} ms (medians), others' CPU {:.0}%",
                    Summary::of(&run.unloaded_ttft_s).p50 * 1e3,
                    Summary::of(&run.loaded_ttft_s).p50 * 1e3,
                    run.other_cpu_share * 100.0
                );
            }
            runs.push(run);
        }
        let unloaded: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.unloaded_ttft_s.clone())
            .collect();
        let loaded: Vec<f64> = runs.iter().flat_map(|r| r.loaded_ttft_s.clone()).collect();
        let (unloaded, loaded) = (Summary::of(&unloaded), Summary::of(&loaded));
        Some(ShortSummary {
            long_requests: args.long_requests,
            long_max_tokens: args.long_max_tokens,
            probe_prompt_tokens: short_prompt_tokens,
            probe_max_tokens: args.short_max_tokens,
            ratio: if unloaded.p50 > 0.0 {
                loaded.p50 / unloaded.p50
            } else {
                0.0
            },
            unloaded_ttft_s: unloaded,
            loaded_ttft_s: loaded,
            runs,
        })
    } else {
        None
    };

    // Read before draining: the model and its cache are freed when the scheduler thread ends.
    let rss_end = read_status_kb("VmRSS")?;
    let peak = read_status_kb("VmHWM")?;
    let (rss_anon_end, rss_file_end) = (read_status_kb("RssAnon")?, read_status_kb("RssFile")?);
    engine.drain();
    engine.join();
    let memory = Memory {
        rss_start_bytes: rss_start,
        rss_runtime_bytes: rss_runtime,
        rss_model_bytes: rss_model,
        rss_kv_bytes: rss_kv,
        rss_end_bytes: rss_end,
        peak_bytes: peak,
        rss_anon_end_bytes: rss_anon_end,
        rss_file_end_bytes: rss_file_end,
        weights_bytes,
        kv_cache_bytes,
        peak_beyond_weights_and_kv_bytes: peak as i64
            - weights_bytes as i64
            - kv_cache_bytes as i64,
    };
    let report = Report {
        setup: Setup {
            model: args.model.display().to_string(),
            execution_provider: execution_provider.to_string(),
            intra_op_threads,
            rows,
            row_capacity,
            kv_budget_tokens,
            prefill_chunk_tokens,
            max_tokens: args.max_tokens,
            prompts: prompts.len(),
            prompt_tokens,
            reps: args.reps,
            warmup: args.warmup,
            load_s,
            start_s,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
        },
        memory,
        levels,
        short_under_load,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_tables(&report);
    }
    Ok(())
}

fn load_prompts(path: Option<&Path>) -> anyhow::Result<Vec<PromptEntry>> {
    let Some(path) = path else {
        return Ok(DEFAULT_PROMPTS
            .iter()
            .map(|p| PromptEntry::Text((*p).to_owned()))
            .collect());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the prompts file {}", path.display()))?;
    let prompts: Vec<PromptEntry> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON list of strings or of token-id lists",
            path.display()
        )
    })?;
    if prompts.is_empty() {
        bail!("{}: the prompt list is empty", path.display());
    }
    Ok(prompts)
}

/// A greedy request of `max_tokens` for prompt `index` (cycled).
fn request(prompts: &[PromptEntry], index: usize, max_tokens: u32, id: String) -> GenerateRequest {
    GenerateRequest {
        request_id: id,
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..GenerateRequest::new(prompts[index % prompts.len()].prompt())
    }
}

/// Submits a request and reads its stream to the end, timing every event against `origin`.
/// `on_token` is called with the number of tokens so far whenever tokens arrive; `keep_going`
/// is asked after every event (returning false drops the stream, which cancels the request).
fn submit_and_collect(
    engine: &EngineHandle,
    request: GenerateRequest,
    (request_index, prompt_index): (usize, usize),
    origin: Instant,
    mut on_token: impl FnMut(usize),
    keep_going: impl Fn() -> bool,
) -> anyhow::Result<RequestRecord> {
    let submitted = Instant::now();
    let mut submission = engine
        .submit(request)
        .map_err(|refusal| anyhow::anyhow!("the engine refused a request: {refusal}"))?;
    let mut record = RequestRecord {
        request_index,
        prompt_index,
        prompt_tokens: 0,
        submitted_s: secs(submitted, origin),
        ttft_s: 0.0,
        token_times_s: Vec::new(),
        done_s: 0.0,
        generated: 0,
        finish_reason: String::new(),
        output_ids: Vec::new(),
    };
    loop {
        let event = submission.events.blocking_recv();
        let now = Instant::now();
        match event {
            Some(Event::Started { prompt_tokens }) => record.prompt_tokens = prompt_tokens,
            Some(Event::Token { token_ids, .. }) => {
                if token_ids.is_empty() {
                    continue;
                }
                if record.token_times_s.is_empty() {
                    record.ttft_s = now.duration_since(submitted).as_secs_f64();
                }
                for id in token_ids {
                    record.token_times_s.push(secs(now, origin));
                    record.output_ids.push(id);
                }
                on_token(record.output_ids.len());
            }
            Some(Event::Done {
                finish_reason,
                usage,
            }) => {
                record.done_s = secs(now, origin);
                record.generated = usage.completion_tokens as usize;
                record.finish_reason = finish_reason.as_str().to_owned();
                return Ok(record);
            }
            Some(Event::Error { message, .. }) => bail!("engine error: {message}"),
            None => bail!("the stream ended without `done`"),
        }
        if !keep_going() {
            record.done_s = secs(now, origin);
            record.generated = record.output_ids.len();
            record.finish_reason = "cancelled".into();
            return Ok(record);
        }
    }
}

fn secs(t: Instant, origin: Instant) -> f64 {
    t.saturating_duration_since(origin).as_secs_f64()
}

/// One round of `c` concurrent requests.
fn run_level(
    engine: &EngineHandle,
    prompts: &[PromptEntry],
    c: usize,
    max_tokens: u32,
    rep: usize,
) -> anyhow::Result<LevelRun> {
    let barrier = Arc::new(Barrier::new(c + 1));
    let origin = Instant::now();
    let meter = CpuMeter::start()?;
    let records = std::thread::scope(|scope| -> anyhow::Result<Vec<RequestRecord>> {
        let handles: Vec<_> = (0..c)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                let request = request(prompts, i, max_tokens, format!("bench-c{c}-{i}"));
                scope.spawn(move || {
                    barrier.wait();
                    submit_and_collect(
                        engine,
                        request,
                        (i, i % prompts.len()),
                        origin,
                        |_| {},
                        || true,
                    )
                })
            })
            .collect();
        barrier.wait();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a request thread panicked"))?
            })
            .collect()
    })?;
    let cpu = meter.stop()?;
    let first = records
        .iter()
        .map(|r| r.submitted_s)
        .fold(f64::INFINITY, f64::min);
    let last = records.iter().map(|r| r.done_s).fold(0.0, f64::max);
    let wall = (last - first).max(f64::EPSILON);
    let generated: usize = records.iter().map(|r| r.generated).sum();
    let ttft: Vec<f64> = records.iter().map(|r| r.ttft_s).collect();
    let gaps: Vec<f64> = records
        .iter()
        .flat_map(|r| r.token_times_s.windows(2).map(|w| w[1] - w[0]))
        .collect();
    Ok(LevelRun {
        concurrency: c,
        rep,
        wall_s: wall,
        generated,
        aggregate_tokens_per_s: generated as f64 / wall,
        ttft_s: Summary::of(&ttft),
        inter_token_s: Summary::of(&gaps),
        cpu_cores_used: cpu.own_cores,
        other_cpu_share: cpu.other_share,
        other_cpu_s: cpu.other_s,
        requests: records,
    })
}

/// What the probes saw under load.
#[derive(Debug)]
struct LoadedProbes {
    ttft: Vec<f64>,
    /// Long requests still running at each probe's first token.
    running: Vec<usize>,
    /// From the first probe's submit to the last probe's end, seconds from the origin.
    window: (f64, f64),
    long: Vec<RequestRecord>,
}

/// Long requests decode; once each has its first token, the probes arrive one at a time.
fn run_short_under_load(
    engine: &EngineHandle,
    prompts: &[PromptEntry],
    probe: &PromptEntry,
    args: &BenchArgs,
    rep: usize,
) -> anyhow::Result<ShortRun> {
    let probe_prompts = std::slice::from_ref(probe);
    let run_probe = |origin: Instant, on_token: &mut dyn FnMut(usize)| {
        submit_and_collect(
            engine,
            request(
                probe_prompts,
                0,
                args.short_max_tokens,
                "bench-probe".into(),
            ),
            (0, 0),
            origin,
            on_token,
            || true,
        )
    };
    // The probe alone on the idle engine: one untimed run, then the timed ones.
    run_probe(Instant::now(), &mut |_| {})?;
    let mut unloaded = Vec::new();
    for _ in 0..args.short_probes {
        unloaded.push(run_probe(Instant::now(), &mut |_| {})?.ttft_s);
    }

    let n = args.long_requests;
    let started = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // The latest time between two tokens of long request 0, in ns: the scheduler's step time.
    let step_ns = AtomicU64::new(0);
    let barrier = Barrier::new(n + 1);
    let origin = Instant::now();
    let meter = CpuMeter::start()?;
    let loaded = std::thread::scope(|scope| -> anyhow::Result<LoadedProbes> {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let request = request(prompts, i, args.long_max_tokens, format!("bench-long-{i}"));
                let (started, finished, stop, barrier, step_ns) =
                    (&started, &finished, &stop, &barrier, &step_ns);
                scope.spawn(move || {
                    barrier.wait();
                    let mut last_token: Option<Instant> = None;
                    let record = submit_and_collect(
                        engine,
                        request,
                        (i, i % prompts.len()),
                        origin,
                        |count| {
                            if count == 1 {
                                started.fetch_add(1, Ordering::SeqCst);
                            }
                            if i == 0 {
                                let now = Instant::now();
                                if let Some(last) = last_token {
                                    let gap = now.duration_since(last).as_nanos();
                                    step_ns.store(
                                        u64::try_from(gap).unwrap_or(u64::MAX),
                                        Ordering::SeqCst,
                                    );
                                }
                                last_token = Some(now);
                            }
                        },
                        || !stop.load(Ordering::SeqCst),
                    );
                    finished.fetch_add(1, Ordering::SeqCst);
                    record
                })
            })
            .collect();
        barrier.wait();
        while started.load(Ordering::SeqCst) + finished.load(Ordering::SeqCst) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
        let window_start = secs(Instant::now(), origin);
        let probes = (0..args.short_probes)
            .map(|k| {
                // A probe is submitted right after the previous one's last token, i.e. just
                // after a scheduler step began; real arrivals fall anywhere in a step. So probe
                // k waits (k + 0.5) / probes of a step first: the probes sample the step's phase
                // evenly.
                let phase = (k as f64 + 0.5) / args.short_probes as f64;
                std::thread::sleep(
                    Duration::from_nanos(step_ns.load(Ordering::SeqCst)).mul_f64(phase),
                );
                // Long requests that had not finished when the probe's first token came.
                let mut running = 0;
                let record = run_probe(origin, &mut |count| {
                    if count == 1 {
                        running = n - finished.load(Ordering::SeqCst);
                    }
                })?;
                Ok((record.ttft_s, running))
            })
            .collect::<anyhow::Result<Vec<_>>>();
        let window_end = secs(Instant::now(), origin);
        // The long requests are cancelled now: they have served their purpose.
        stop.store(true, Ordering::SeqCst);
        let long = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a request thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (ttft, running) = probes?.into_iter().unzip();
        Ok(LoadedProbes {
            ttft,
            running,
            window: (window_start, window_end),
            long,
        })
    })?;
    let cpu = meter.stop()?;
    let (from, to) = loaded.window;
    let gaps: Vec<f64> = loaded
        .long
        .iter()
        .flat_map(|r| {
            r.token_times_s
                .windows(2)
                .filter(|w| w[0] >= from && w[1] <= to)
                .map(|w| w[1] - w[0])
        })
        .collect();
    Ok(ShortRun {
        rep,
        unloaded_ttft_s: unloaded,
        loaded_ttft_s: loaded.ttft,
        long_running_at_probe: loaded.running,
        long_inter_token_s: Summary::of(&gaps),
        wall_s: cpu.wall_s,
        other_cpu_share: cpu.other_share,
        other_cpu_s: cpu.other_s,
    })
}

/// CPU time of this process and of the whole machine over an interval.
#[derive(Debug)]
struct CpuMeter {
    wall: Instant,
    machine_busy: u64,
    own: u64,
    cpus: usize,
}

#[derive(Debug)]
struct CpuUse {
    /// This process's CPU seconds per wall second.
    own_cores: f64,
    /// Others' share of all CPUs.
    other_share: f64,
    /// Others' CPU seconds.
    other_s: f64,
    wall_s: f64,
}

impl CpuMeter {
    fn start() -> anyhow::Result<Self> {
        Ok(Self {
            wall: Instant::now(),
            machine_busy: machine_busy_ticks()?,
            own: own_ticks()?,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
        })
    }

    fn stop(self) -> anyhow::Result<CpuUse> {
        let wall = self.wall.elapsed().as_secs_f64().max(f64::EPSILON);
        let busy = machine_busy_ticks()?.saturating_sub(self.machine_busy) as f64 / USER_HZ;
        let own = own_ticks()?.saturating_sub(self.own) as f64 / USER_HZ;
        let other = (busy - own).max(0.0);
        Ok(CpuUse {
            own_cores: own / wall,
            other_share: (other / (wall * self.cpus as f64)).min(1.0),
            other_s: other,
            wall_s: wall,
        })
    }
}

/// user + nice + system + irq + softirq + steal of all CPUs, from `/proc/stat`.
fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok([0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| values.get(i).copied().unwrap_or(0))
        .sum())
}

/// utime + stime of this process (all threads), from `/proc/self/stat`.
fn own_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("cannot read /proc/self/stat")?;
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based in proc(5)).
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    Ok(field(14) + field(15))
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn read_status_kb(key: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {key} in /proc/self/status"))
}

/// `model.onnx` plus the external data files next to it (`*.data`, `*.onnx_data`).
fn weights_on_disk(model_file: &Path) -> anyhow::Result<u64> {
    let mut total = std::fs::metadata(model_file)
        .with_context(|| format!("cannot stat {}", model_file.display()))?
        .len();
    let dir = model_file.parent().unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".data") || name.ends_with(".onnx_data") {
            total += std::fs::metadata(&path)?.len();
        }
    }
    Ok(total)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_tables(report: &Report) {
    let s = &report.setup;
    println!(
        "model {} ({}, {} intra-op threads): {} rows × {} positions, prefill chunk {}, max_tokens {}, {} prompts of {:?} tokens, {} rep(s) after {} warm-up round(s); load {:.2}s, scheduler start {:.2}s",
        s.model,
        s.execution_provider,
        s.intra_op_threads,
        s.rows,
        s.row_capacity,
        s.prefill_chunk_tokens,
        s.max_tokens,
        s.prompts,
        s.prompt_tokens,
        s.reps,
        s.warmup,
        s.load_s,
        s.start_s
    );
    if !report.levels.is_empty() {
        println!();
        println!(
            "| concurrency | rep | generated | wall s | aggregate tok/s | TTFT p50 ms | TTFT p95 ms | TTFT max ms | inter-token p50 ms | inter-token p95 ms | cores used | others' CPU |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &report.levels {
            println!(
                "| {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0}% |",
                r.concurrency,
                r.rep,
                r.generated,
                r.wall_s,
                r.aggregate_tokens_per_s,
                r.ttft_s.p50 * 1e3,
                r.ttft_s.p95 * 1e3,
                r.ttft_s.max * 1e3,
                r.inter_token_s.p50 * 1e3,
                r.inter_token_s.p95 * 1e3,
                r.cpu_cores_used,
                r.other_cpu_share * 100.0
            );
        }
    }
    if let Some(short) = &report.short_under_load {
        println!();
        println!(
            "short request ({} prompt tokens, {} new) while {} long requests ({} new tokens each) decode:",
            short.probe_prompt_tokens,
            short.probe_max_tokens,
            short.long_requests,
            short.long_max_tokens
        );
        println!(
            "| TTFT unloaded p50 ms | TTFT loaded p50 ms | TTFT loaded max ms | loaded / unloaded | long requests' inter-token p50 ms |"
        );
        println!("|---:|---:|---:|---:|---:|");
        let gaps: Vec<f64> = short
            .runs
            .iter()
            .map(|r| r.long_inter_token_s.p50)
            .collect();
        println!(
            "| {:.1} | {:.1} | {:.1} | {:.2} | {:.2} |",
            short.unloaded_ttft_s.p50 * 1e3,
            short.loaded_ttft_s.p50 * 1e3,
            short.loaded_ttft_s.max * 1e3,
            short.ratio,
            Summary::of(&gaps).p50 * 1e3
        );
    }
    let m = &report.memory;
    println!();
    println!(
        "| RSS start MiB | + ONNX Runtime | + model | + KV cache & warm-up | end (anon + file) | peak (VmHWM) | weights on disk | KV cache | peak − weights − KV |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.1} | {:.1} ({:.1} + {:.1}) | {:.1} | {:.1} | {:.1} | {:.1} |",
        mib(m.rss_start_bytes),
        mib(m.rss_runtime_bytes),
        mib(m.rss_model_bytes),
        mib(m.rss_kv_bytes),
        mib(m.rss_end_bytes),
        mib(m.rss_anon_end_bytes),
        mib(m.rss_file_end_bytes),
        mib(m.peak_bytes),
        mib(m.weights_bytes),
        mib(m.kv_cache_bytes),
        m.peak_beyond_weights_and_kv_bytes as f64 / (1024.0 * 1024.0)
    );
}
