//! Batch invariance of the batched KV cache: sequences at different positions decoded together
//! give exactly the greedy ids each gives alone, also after rows move to stay contiguous.

#[path = "../../../tests/support/reference.rs"]
mod reference;

use std::sync::atomic::AtomicBool;

use moebox_engine::{
    generate::{GenerationRequest, generate},
    model::{Model, SessionOptions},
    sampling::{Sampler, SamplingParams},
};

fn model() -> Model {
    let runtime = moebox_engine::runtime::load(None).expect("ONNX Runtime (run ./dev setup)");
    Model::load(&runtime, &reference::fixture(), &SessionOptions::cpu()).expect("fixture loads")
}

fn alone(model: &mut Model, prompt: &[u32], tokens: u32) -> Vec<u32> {
    let request = GenerationRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens: Some(tokens),
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
    };
    generate(model, &request, tokens, &AtomicBool::new(false), |_| {})
        .expect("generates")
        .output_ids
}

struct Row {
    prompt: Vec<u32>,
    want: Vec<u32>,
    got: Vec<u32>,
    sampler: Sampler,
}

#[test]
fn rows_at_different_positions_decode_as_they_would_alone() {
    check_batch_invariance(model());
}

/// The same on an NVIDIA GPU with the fp16 CUDA export (tests/gpu/run.sh runs it there).
#[test]
fn gpu_rows_at_different_positions_decode_as_they_would_alone_on_cuda() {
    let runtime = moebox_engine::runtime::load(None).expect("ONNX Runtime GPU (ORT_DYLIB_PATH)");
    let options = SessionOptions {
        execution_provider: moebox_config::ExecutionProviderKind::Cuda,
        ..SessionOptions::cpu()
    };
    let dir = reference::repo_root().join("tests/gpu/tiny-moe-fp16-cuda");
    let model = Model::load(&runtime, &dir, &options).expect("fp16 CUDA export loads on GPU 0");
    assert_eq!(model.device, moebox_engine::model::Device::Cuda(0));
    check_batch_invariance(model);
}

fn check_batch_invariance(mut model: Model) {
    let prompts = [
        "Hello, world!",
        "The balance sheet shows",
        "Quarterly revenue grew by 12% while costs fell.",
        "Invoice #4471: 3 × consulting hours @ €150",
    ];
    // Different lengths so rows finish at different steps and rows must move.
    let lengths = [70_u32, 45, 90, 60];
    let mut rows: Vec<Row> = prompts
        .iter()
        .zip(lengths)
        .map(|(p, n)| {
            let prompt = model.tokenizer.encode(p).expect("encodes");
            let want = alone(&mut model, &prompt, n);
            Row {
                sampler: Sampler::new(SamplingParams::greedy(), &prompt).expect("sampler"),
                prompt,
                want,
                got: Vec::new(),
            }
        })
        .collect();

    let vocab = model.spec.vocab_size;
    let mut cache = model.new_batch_cache(4, 256).expect("cache");
    // Prefill row by row, the second one in two chunks.
    for (slot, row) in rows.iter_mut().enumerate() {
        let mut done = 0;
        let mut logits = Vec::new();
        let chunk = if slot == 1 { 3 } else { row.prompt.len() };
        while done < row.prompt.len() {
            let end = (done + chunk).min(row.prompt.len());
            logits = model
                .forward_batch(
                    &mut cache,
                    slot,
                    &row.prompt[done..end],
                    end - done,
                    &[done],
                )
                .expect("prefill");
            done = end;
        }
        let token = row.sampler.sample(&mut logits);
        row.got.push(token);
    }
    // Running rows occupy slots 0..running; `order[slot]` is the row in that slot.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    loop {
        // Retire finished rows, moving the last running row into the hole.
        let mut slot = 0;
        while slot < order.len() {
            let row = &rows[order[slot]];
            if row.got.len() >= row.want.len() {
                let last = order.len() - 1;
                cache.move_row(last, slot).expect("move row");
                order.swap_remove(slot);
            } else {
                slot += 1;
            }
        }
        if order.is_empty() {
            break;
        }
        let tokens: Vec<u32> = order
            .iter()
            .map(|&r| *rows[r].got.last().expect("a token"))
            .collect();
        let past: Vec<usize> = order
            .iter()
            .map(|&r| rows[r].prompt.len() + rows[r].got.len() - 1)
            .collect();
        let mut logits = model
            .forward_batch(&mut cache, 0, &tokens, 1, &past)
            .expect("decode");
        for (i, &r) in order.iter().enumerate() {
            let token = rows[r]
                .sampler
                .sample(&mut logits[i * vocab..(i + 1) * vocab]);
            rows[r].got.push(token);
        }
    }
    for (prompt, row) in prompts.iter().zip(&rows) {
        assert_eq!(
            row.got, row.want,
            "batched ids differ from alone for {prompt:?}"
        );
    }
}

#[test]
fn forward_batch_refuses_rows_outside_the_cache() {
    let mut model = model();
    let mut cache = model.new_batch_cache(2, 64).expect("cache");
    let err = model
        .forward_batch(&mut cache, 1, &[5, 6], 1, &[0, 0])
        .expect_err("rows 1..3 of 2");
    assert!(err.to_string().contains("outside a cache of 2"), "{err}");
    let err = model
        .forward_batch(&mut cache, 0, &[5], 1, &[64])
        .expect_err("over capacity");
    assert!(err.to_string().contains("row capacity of 64"), "{err}");
}
