//! The continuous-batching scheduler: batch invariance, admission, cancellation, draining.

#[path = "../../../tests/support/reference.rs"]
mod reference;

use std::{
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use moebox_engine::{
    generate::{GenerationRequest, generate},
    model::{Model, SessionOptions},
    sampling::SamplingParams,
    scheduler::{EngineHandle, SchedulerLimits, Submission, start},
};
use moebox_protocol::{
    EngineState, ErrorCode, Event, FinishReason, GenerateRequest, Message, Prompt,
};

fn model() -> Model {
    let runtime = moebox_engine::runtime::load(None).expect("ONNX Runtime (run ./dev setup)");
    Model::load(&runtime, &reference::fixture(), &SessionOptions::cpu()).expect("fixture loads")
}

fn limits(rows: usize, max_waiting: usize) -> SchedulerLimits {
    SchedulerLimits {
        kv_budget_tokens: rows * 256,
        row_capacity: 256,
        max_waiting,
        prefill_chunk_tokens: 8,
        default_max_tokens: 64,
    }
}

fn engine(rows: usize, max_waiting: usize) -> EngineHandle {
    start(model(), limits(rows, max_waiting), Box::new(|| {})).expect("engine starts")
}

fn text_request(prompt: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        max_tokens: Some(max_tokens),
        ..GenerateRequest::new(Prompt::Text(prompt.into()))
    }
}

/// Reads a stream to its end: (token ids, text, finish reason).
fn collect(mut submission: Submission) -> (Vec<u32>, String, FinishReason) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match submission.events.blocking_recv() {
            Some(Event::Started { .. }) => {}
            Some(Event::Token { text: t, token_ids }) => {
                ids.extend(token_ids);
                text.push_str(&t);
            }
            Some(Event::Done {
                finish_reason,
                usage,
            }) => {
                assert_eq!(usage.completion_tokens as usize, ids.len());
                return (ids, text, finish_reason);
            }
            Some(Event::Error { message, .. }) => panic!("engine error: {message}"),
            None => panic!("stream ended without done"),
        }
    }
}

fn alone(
    model: &mut Model,
    prompt: &str,
    max_tokens: u32,
    sampling: SamplingParams,
) -> (Vec<u32>, String) {
    let request = GenerationRequest {
        prompt_ids: model.tokenizer.encode(prompt).expect("encodes"),
        max_tokens: Some(max_tokens),
        sampling,
        stop: Vec::new(),
    };
    let generation =
        generate(model, &request, max_tokens, &AtomicBool::new(false), |_| {}).expect("generates");
    (generation.output_ids, generation.text)
}

const PROMPTS: [(&str, u32); 6] = [
    ("Hello, world!", 70),
    ("The balance sheet shows", 40),
    ("Quarterly revenue grew by 12% while costs fell.", 90),
    ("Invoice #4471: 3 × consulting hours @ €150", 55),
    ("Tax filings are due on the fifteenth of April", 80),
    ("会計年度の決算報告", 33),
];

#[test]
fn greedy_results_are_the_same_alone_and_in_a_full_batch() {
    let mut reference_model = model();
    let expected: Vec<_> = PROMPTS
        .iter()
        .map(|(p, n)| alone(&mut reference_model, p, *n, SamplingParams::greedy()))
        .collect();
    // Four rows for six requests: two wait, rows retire and move while others decode.
    let engine = engine(4, 8);
    let submissions: Vec<Submission> = PROMPTS
        .iter()
        .map(|(p, n)| engine.submit(text_request(p, *n)).expect("admitted"))
        .collect();
    let results: Vec<_> = submissions.into_iter().map(collect).collect();
    for ((prompt, _), ((ids, text, _), (want_ids, want_text))) in
        PROMPTS.iter().zip(results.iter().zip(&expected))
    {
        assert_eq!(ids, want_ids, "ids differ in the batch for {prompt:?}");
        assert_eq!(text, want_text, "text differs in the batch for {prompt:?}");
    }
    wait_until("the batch empties", || {
        let load = engine.load();
        load.running == 0 && load.kv_reserved_tokens == 0 && load.generated_tokens_total > 0
    });
}

/// A burst of fresh prompts of the same length shares one prefill run, and each still gets
/// exactly what it gets alone.
#[test]
fn equal_length_newcomers_share_a_prefill_run_and_match_alone() {
    let mut reference_model = model();
    let first = reference_model
        .tokenizer
        .encode("Invoice 1000 for client 7")
        .expect("encodes")
        .len();
    let prompts: Vec<String> = (1001..1200)
        .map(|n| format!("Invoice {n} for client 7"))
        .filter(|p| reference_model.tokenizer.encode(p).expect("encodes").len() == first)
        .take(4)
        .collect();
    assert_eq!(prompts.len(), 4, "four prompts of {first} tokens");
    let expected: Vec<_> = prompts
        .iter()
        .map(|p| alone(&mut reference_model, p, 12, SamplingParams::greedy()).0)
        .collect();
    let chunk = SchedulerLimits {
        prefill_chunk_tokens: 4 * first,
        ..limits(5, 8)
    };
    let engine = start(model(), chunk, Box::new(|| {})).expect("engine starts");
    // A long request keeps the scheduler looping, so the burst arrives between iterations.
    let blocker = engine
        .submit(text_request("The balance sheet shows", 200))
        .expect("admitted");
    wait_until("the blocker runs", || engine.load().running == 1);
    let before = engine.load().prefill_runs_total;
    let submissions: Vec<Submission> = prompts
        .iter()
        .map(|p| engine.submit(text_request(p, 12)).expect("admitted"))
        .collect();
    let results: Vec<_> = submissions.into_iter().map(|s| collect(s).0).collect();
    assert_eq!(results, expected);
    let runs = engine.load().prefill_runs_total - before;
    assert!(runs < 4, "{runs} prefill runs for 4 equal-length newcomers");
    drop(blocker);
}

#[test]
fn seeded_sampling_is_the_same_alone_and_in_a_batch() {
    let mut reference_model = model();
    let sampling = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(42),
        ..SamplingParams::greedy()
    };
    let (want, _) = alone(
        &mut reference_model,
        "The balance sheet shows",
        50,
        sampling,
    );
    let engine = engine(3, 4);
    let others: Vec<Submission> = ["Hello, world!", "会計年度の決算報告"]
        .iter()
        .map(|p| engine.submit(text_request(p, 60)).expect("admitted"))
        .collect();
    let request = GenerateRequest {
        temperature: Some(0.9),
        top_p: Some(0.95),
        seed: Some(42),
        ..text_request("The balance sheet shows", 50)
    };
    let (ids, _, _) = collect(engine.submit(request).expect("admitted"));
    assert_eq!(ids, want);
    for other in others {
        collect(other);
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn cancelling_frees_the_row_and_its_kv_budget() {
    let engine = engine(1, 2);
    let mut submission = engine
        .submit(text_request("Hello, world!", 200))
        .expect("admitted");
    // Read a few tokens, then hang up as a disconnecting client does.
    let mut seen = 0;
    while seen < 3 {
        if let Some(Event::Token { .. }) = submission.events.blocking_recv() {
            seen += 1;
        }
    }
    assert!(engine.load().kv_reserved_tokens > 0);
    drop(submission);
    wait_until("the cancelled sequence leaves", || {
        let load = engine.load();
        load.running == 0 && load.kv_reserved_tokens == 0
    });
    // The engine keeps serving.
    let (ids, _, reason) = collect(
        engine
            .submit(text_request("The balance sheet shows", 10))
            .expect("admitted"),
    );
    assert_eq!((ids.len(), reason), (10, FinishReason::Length));
}

#[test]
fn exhausted_budget_queues_then_refuses_with_a_clear_error() {
    // One row and one waiting place: the third request is refused at once.
    let engine = engine(1, 1);
    let first = engine
        .submit(text_request("Hello, world!", 120))
        .expect("runs");
    let mut second = None;
    let mut third = None;
    // The first may still sit in the queue until the scheduler takes it: retry until it runs.
    wait_until("one request runs and one waits", || {
        if second.is_none() {
            second = engine
                .submit(text_request("The balance sheet shows", 5))
                .ok();
        }
        if second.is_some() && third.is_none() {
            third = Some(engine.submit(text_request("会計年度の決算報告", 5)));
        }
        third.is_some()
    });
    let refusal = third.expect("tried").expect_err("queue is full");
    assert_eq!(refusal.0.code, ErrorCode::QueueFull);
    assert!(
        refusal.0.message.contains("engine.max_waiting = 1"),
        "{}",
        refusal.0.message
    );
    assert_eq!(refusal.0.retry_after_seconds, Some(1));
    let (_, _, reason) = collect(first);
    assert_eq!(reason, FinishReason::Length);
    let (ids, _, _) = collect(second.expect("queued"));
    assert_eq!(ids.len(), 5, "the queued request runs once the row is free");
}

#[test]
fn invalid_requests_name_the_field_and_limit() {
    let engine = engine(1, 1);
    let refusal = engine
        .submit(GenerateRequest {
            temperature: Some(5.0),
            ..text_request("hi", 5)
        })
        .expect_err("temperature 5");
    assert_eq!(refusal.0.param.as_deref(), Some("temperature"));
    let refusal = engine
        .submit(text_request("hi", 10_000))
        .expect_err("too long");
    assert_eq!(refusal.0.code, ErrorCode::ContextLengthExceeded);
    assert!(
        refusal.0.message.contains("at most 256 tokens"),
        "{}",
        refusal.0.message
    );
    let refusal = engine
        .submit(GenerateRequest {
            max_prompt_tokens: Some(2),
            ..text_request("a prompt of more than two tokens", 5)
        })
        .expect_err("prompt over the gateway's cap");
    assert_eq!(refusal.0.code, ErrorCode::ContextLengthExceeded);
    assert!(
        refusal.0.message.contains("gateway.max_prompt_tokens"),
        "{}",
        refusal.0.message
    );
    engine
        .submit(GenerateRequest {
            max_prompt_tokens: Some(1_000),
            ..text_request("short", 1)
        })
        .expect("under the cap");
    let refusal = engine
        .submit(GenerateRequest::new(Prompt::Chat(vec![Message {
            role: "wizard".into(),
            content: "hi".into(),
        }])))
        .expect_err("the template raises");
    assert_eq!(refusal.0.param.as_deref(), Some("messages"));
    assert!(
        refusal.0.message.contains("wizard"),
        "{}",
        refusal.0.message
    );
    let refusal = engine
        .submit(GenerateRequest {
            stop: vec![String::new()],
            ..text_request("hi", 5)
        })
        .expect_err("empty stop");
    assert_eq!(refusal.0.param.as_deref(), Some("stop"));
}

#[test]
fn draining_finishes_running_requests_and_refuses_new_ones() {
    let engine = engine(2, 4);
    let mut running = engine
        .submit(text_request("Hello, world!", 40))
        .expect("runs");
    // Drain once it runs: requests still waiting when draining starts are refused.
    assert!(matches!(
        running.events.blocking_recv(),
        Some(Event::Started { .. })
    ));
    engine.drain();
    assert_eq!(engine.state(), EngineState::Draining);
    let refusal = engine.submit(text_request("hi", 5)).expect_err("draining");
    assert_eq!(refusal.0.code, ErrorCode::Unavailable);
    let (ids, _, reason) = collect(running);
    assert_eq!((ids.len(), reason), (40, FinishReason::Length));
    engine.join();
}

#[test]
fn chat_requests_render_the_template_in_the_engine() {
    let mut reference_model = model();
    let template = reference_model
        .chat_template
        .clone()
        .expect("fixture has a template");
    let rendered = template
        .render(
            &[moebox_engine::chat_template::ChatMessage {
                role: "user".into(),
                content: "Summarise the audit findings.".into(),
            }],
            true,
        )
        .expect("renders");
    let (want, _) = alone(
        &mut reference_model,
        &rendered,
        30,
        SamplingParams::greedy(),
    );
    let engine = engine(1, 1);
    let request = GenerateRequest {
        max_tokens: Some(30),
        ..GenerateRequest::new(Prompt::Chat(vec![Message {
            role: "user".into(),
            content: "Summarise the audit findings.".into(),
        }]))
    };
    let (ids, _, _) = collect(engine.submit(request).expect("admitted"));
    assert_eq!(ids, want);
}

#[test]
fn a_sequence_cancelled_while_others_prefill_leaves_their_results_unchanged() {
    let mut reference_model = model();
    let prompts = [
        "Quarterly revenue grew by 12% while costs fell.",
        "Invoice #4471: 3 × consulting hours @ €150",
        "Tax filings are due on the fifteenth of April",
    ];
    let expected: Vec<_> = [prompts[0], prompts[2]]
        .iter()
        .map(|p| alone(&mut reference_model, p, 30, SamplingParams::greedy()).0)
        .collect();
    // Chunks of 8 tokens: all three prompts are still prefilling when the second is cancelled.
    let engine = engine(3, 3);
    let first = engine
        .submit(text_request(prompts[0], 30))
        .expect("admitted");
    let mut second = engine
        .submit(text_request(prompts[1], 30))
        .expect("admitted");
    let third = engine
        .submit(text_request(prompts[2], 30))
        .expect("admitted");
    assert!(matches!(
        second.events.blocking_recv(),
        Some(Event::Started { .. })
    ));
    drop(second);
    let (a, _, _) = collect(first);
    let (c, _, _) = collect(third);
    assert_eq!(vec![a, c], expected);
    wait_until("the batch empties", || engine.load().running == 0);
}
