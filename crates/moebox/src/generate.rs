//! `moebox generate`: raw-prompt generation on a model folder.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::Instant,
};

use anyhow::Context;
use moebox_config::{Config, ExecutionProviderKind};
use moebox_engine::{
    chat_template::ChatMessage,
    generate::{GenerationRequest, generate},
    model::{Model, SessionOptions},
    sampling::SamplingParams,
};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// onnxruntime-genai model folder.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The prompt, tokenized as is (or as the user's message with --chat).
    #[arg(long)]
    prompt: String,
    /// Render the prompt through the model's chat template as one user message.
    #[arg(long)]
    chat: bool,
    /// Completion length; default: `engine.max_tokens`, cut to what the context leaves.
    #[arg(long, value_name = "N")]
    max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy. Default: the model's search defaults.
    #[arg(long, value_name = "T")]
    temperature: Option<f32>,
    #[arg(long, value_name = "P")]
    top_p: Option<f32>,
    #[arg(long, value_name = "K")]
    top_k: Option<u32>,
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Stop sequence (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Print {"prompt_ids","output_ids","text","finish_reason"} instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Print timing (prefill, decode tokens/s) to stderr.
    #[arg(long)]
    timing: bool,
    /// Configuration file, for the ONNX Runtime library and engine settings.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Execution provider; default cpu (the config's `engine.execution_provider` with --config).
    #[arg(long, value_name = "cpu|cuda")]
    execution_provider: Option<String>,
    /// CUDA device ordinal.
    #[arg(long, value_name = "N", default_value_t = 0)]
    gpu: i32,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    prompt_ids: &'a [u32],
    output_ids: &'a [u32],
    text: &'a str,
    finish_reason: &'a str,
}

/// The configuration of a command that runs a model without the services (`generate`,
/// `bench`): the file when one is given, else the defaults on the CPU; and the execution
/// provider, `--execution-provider` overriding the config's.
pub fn config_and_provider(
    path: Option<&std::path::Path>,
    execution_provider: Option<&str>,
) -> anyhow::Result<(Config, ExecutionProviderKind)> {
    let config = match path {
        Some(path) => Config::load(path)?,
        None => {
            let mut config = Config::default();
            config.engine.execution_provider = ExecutionProviderKind::Cpu;
            config
        }
    };
    let execution_provider = match execution_provider {
        None => config.engine.execution_provider,
        Some("cpu") => ExecutionProviderKind::Cpu,
        Some("cuda") => ExecutionProviderKind::Cuda,
        Some(other) => anyhow::bail!("--execution-provider must be `cpu` or `cuda`, got `{other}`"),
    };
    Ok((config, execution_provider))
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let (config, execution_provider) =
        config_and_provider(args.config.as_deref(), args.execution_provider.as_deref())?;
    let runtime = moebox_engine::runtime::load(config.onnxruntime.library.as_deref())?;
    let options = SessionOptions {
        execution_provider,
        device_id: args.gpu,
        allow_cpu_fallback: config.engine.allow_cpu_fallback,
        intra_op_threads: config.engine.intra_op_threads,
        cuda: config.engine.cuda.clone(),
    };
    let load_start = Instant::now();
    let mut model = Model::load(&runtime, &args.model, &options)
        .with_context(|| format!("cannot load the model folder {}", args.model.display()))?;
    let load_time = load_start.elapsed();

    let prompt_text = if args.chat {
        let template = model.chat_template.as_ref().with_context(|| {
            format!(
                "--chat: the model folder {} has no chat template",
                args.model.display()
            )
        })?;
        template.render(
            &[ChatMessage {
                role: "user".into(),
                content: args.prompt.clone(),
            }],
            true,
        )?
    } else {
        args.prompt.clone()
    };
    let prompt_ids = model.tokenizer.encode(&prompt_text)?;

    let sampling = SamplingParams::with_model_defaults(
        &model.spec.search,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        Some(args.repetition_penalty),
        Some(args.presence_penalty),
        Some(args.frequency_penalty),
    );
    let request = GenerationRequest {
        prompt_ids,
        max_tokens: args.max_tokens,
        sampling,
        stop: args.stop.clone(),
    };

    let cancel = Arc::new(AtomicBool::new(false));
    let stream = !args.json;
    let mut stdout = std::io::stdout().lock();
    let start = Instant::now();
    let generation = generate(
        &mut model,
        &request,
        config.engine.max_tokens,
        &cancel,
        |chunk| {
            if stream {
                // A closed stdout (`| head`) must not abort generation mid-way with a panic.
                let _ = stdout.write_all(chunk.as_bytes());
                let _ = stdout.flush();
            }
        },
    )?;
    let total = start.elapsed();

    if args.json {
        let output = JsonOutput {
            prompt_ids: &generation.prompt_ids,
            output_ids: &generation.output_ids,
            text: &generation.text,
            finish_reason: generation.finish_reason.as_str(),
        };
        writeln!(stdout, "{}", serde_json::to_string(&output)?)?;
    } else {
        writeln!(stdout)?;
    }
    if args.timing {
        let generated = generation.output_ids.len();
        let timings = generation.timings;
        eprintln!(
            "timing: load {:.3}s, prompt {} tokens, prefill {:.4}s, generated {} tokens in {:.3}s, decode {:.1} tokens/s, finish {}",
            load_time.as_secs_f64(),
            generation.prompt_ids.len(),
            timings.prefill.as_secs_f64(),
            generated,
            total.as_secs_f64(),
            timings.decode_tokens_per_second(generated),
            generation.finish_reason.as_str(),
        );
    }
    Ok(())
}
