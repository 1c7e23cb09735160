#!/usr/bin/env python3
"""Concurrent-request benchmark: moebox's continuous-batching scheduler against onnxruntime-genai's
Engine, on the same model, prompts, max_tokens and intra-op threads.

    python batch.py --moebox target/release/moebox --model tests/fixtures/tiny-moe \\
        --model /work/cache/bench-moe [--concurrency 1,4,16,32] [--max-tokens 128] [--reps 3] \\
        [--json-out FILE]

Run it with the reference venv's python (tests/fixtures/reference-venv.sh); tests/bench/batch.sh
does the setup and runs it. It reuses decode.py's conventions (and code): the same explicit
intra-op thread count for both engines (default: the physical cores), the busy-machine check
(a run during which other processes took more than --busy-share of the CPUs is redone, up to
--busy-retries times), moebox and genai runs interleaved, median [min–max] of the repetitions.

For every model and concurrency c:

  moebox  one `moebox bench --concurrency c --scenarios levels --reps 1 --warmup 1 --json` process
          per repetition: it loads the model, starts the scheduler with c rows, runs one untimed
          round (c requests of min(N, c + 16) tokens), then submits c greedy requests at once,
          one client thread each, and reports every request's submit, token and done times and
          its ids (see crates/moebox/src/bench.rs). Its own /proc/stat accounting of other
          processes' CPU during the timed round decides whether the run is redone.
  genai   og.Engine on one og.Model per model (threads overlaid in genai_config), one untimed round
          per level like moebox's, then per repetition: c requests created and begun (begin_turn,
          greedy, set_max_generated_tokens(N)) in a loop, then `engine.run(buffer)` until no
          request is pending; a request's token arrives when the run() that produced it returns.

Definitions (both engines): TTFT = submit (begin_turn / EngineHandle::submit) → the first token
reaches the client; aggregate tokens/s = generated tokens of all c requests / (last done − first
submit); inter-token = time between consecutive tokens of one request.

onnxruntime-genai's Engine on this export: the model has no PagedAttention (the builder's export
for GroupQueryAttention), so genai_config has no engine.dynamic_batching and og.Engine takes its
*static batching* path: it takes up to 4 queued requests (a fixed batch size in
StaticBatchScheduler::Schedule, whatever engine.static_batching.max_batch_size says), allocates one
KV cache for that batch, decodes it until every request in it is finished, and only then admits
the next batch. Its static decoder right-pads input_ids to the longest prompt of the batch while
the attention mask counts each row's own length, which GroupQueryAttention rejects
("seqlens_k[0] = 8 is too small for sequence_length 11"): prompts of different lengths fail in
one batch. So every prompt here has the same number of tokens (--prompt-tokens; cut from a token
stream of fixed texts, then passed to both engines as token ids); the script records the mixed
length failure once per model (see "genai static batch with mixed prompt lengths").

Prompts: cut so that greedy search runs to N new tokens without an EOS where possible (checked
with a single-stream og.Generator run, whose ids are also the reference for the ids check);
EOS-stopping candidates are used only if too few others exist. "ids equal" compares, per prompt,
moebox's ids (from the batched run) with genai's Engine ids at the same level and with the
single-stream reference; a trailing EOS is ignored (genai's Engine does not report it as a token).

Short request under load (moebox only; genai's static batching has no notion of joining a running
batch — see the c = 16 row's TTFT max for what a request arriving behind 15 others waits there):
one `moebox bench --scenarios short` process per repetition: 15 long requests (256 tokens) decode;
once each has its first token, 10 short probes are submitted one after another, each at a
different phase of a scheduler step (probe k waits (k + 0.5)/10 of a step after the previous one's
last token, as requests arrive at random times); their TTFT is compared with the same probe on
the idle engine.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import OtherLoad, count_parameters, human_params, machine_facts, physical_cores  # noqa: E402

# Token stream the prompts are cut from (raw text, both models share the tokenizer's vocabulary).
TEXTS = [
    "Revenue increased by 12 percent, while operating expenses decreased slightly compared to last year.",
    "Please summarise the quarterly report and list the three largest risks for the client.",
    "Tax filings are due on the fifteenth of April; late submissions incur a penalty and interest.",
    "The server runs two GPUs and serves a mixture of experts language model to the staff of the firm.",
    "Once upon a time there was a little robot who wanted to learn how to count: one, two, three, four,",
    "    def total(items):\n        return sum(item.price * item.quantity for item in items)\n",
    "Dear client, attached you will find the balance sheet and the income statement for the fiscal year.",
    "The auditors asked for the invoices of March, the bank statements and the payroll records.",
    "Depreciation of the new equipment is spread over five years using the straight-line method.",
    "Meeting notes: the board approved the budget, the hiring plan and the move to the new office.",
    "SELECT customer, SUM(amount) FROM invoices WHERE year = 2025 GROUP BY customer ORDER BY 2 DESC;",
    "Interest rates rose twice this year, which raised the cost of the firm's revolving credit line.",
]
PROBE_PROMPT = "    return a + b"


def pct(values, q):
    """numpy's default percentile (linear interpolation), without numpy."""
    s = sorted(values)
    if not s:
        return 0.0
    rank = q * (len(s) - 1)
    lo, hi = int(rank), min(int(rank) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def med_range(values, scale=1.0, digits=1):
    if not values:
        return "–"
    return (f"{statistics.median(values) * scale:.{digits}f} "
            f"[{min(values) * scale:.{digits}f}–{max(values) * scale:.{digits}f}]")


def first_difference(a, b):
    return next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), None if len(a) == len(b) else min(len(a), len(b)))


def strip_eos(ids, eos):
    return ids[:-1] if ids and ids[-1] in eos else ids


def summarize(requests, c):
    """Aggregate figures of one round from per-request records (same shape for both engines)."""
    first = min(r["submitted_s"] for r in requests)
    last = max(r["done_s"] for r in requests)
    wall = max(last - first, 1e-9)
    generated = sum(r["generated"] for r in requests)
    ttft = [r["ttft_s"] for r in requests]
    gaps = [b - a for r in requests for a, b in zip(r["token_times_s"], r["token_times_s"][1:])]
    return {
        "concurrency": c,
        "wall_s": wall,
        "generated": generated,
        "aggregate_tps": generated / wall,
        "ttft_p50": pct(ttft, 0.5),
        "ttft_p95": pct(ttft, 0.95),
        "ttft_max": max(ttft),
        "itl_p50": pct(gaps, 0.5) if gaps else 0.0,
        "itl_p95": pct(gaps, 0.95) if gaps else 0.0,
    }


# --- moebox -----------------------------------------------------------------------------------

def moebox_bench(binary, model, extra, threads):
    cmd = [str(binary), "bench", "--model", str(model), "--json"] + extra
    if threads:
        cmd += ["--intra-op-threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"moebox bench failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def busy(other_s, wall, cpus, share):
    return other_s > max(share * wall * cpus, 0.03)


# --- onnxruntime-genai ------------------------------------------------------------------------

class GenaiEngine:
    def __init__(self, model_dir, threads):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(model_dir))
        if threads:
            config.overlay(json.dumps(
                {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.eos = {int(t) for t in self.tokenizer.eos_token_ids}
        self.engine = og.Engine(self.model)
        caps = self.engine.get_capabilities()
        self.capabilities = {"configured_max_batch_size": caps.configured_max_batch_size,
                             "max_request_length": caps.max_request_length,
                             "max_scheduled_tokens": caps.max_scheduled_tokens}
        cfg = json.loads((Path(model_dir) / "genai_config.json").read_text(encoding="utf-8"))
        self.window = (cfg["model"]["decoder"].get("sliding_window") or {}).get("window_size") or 0
        self.context_length = cfg["model"]["context_length"]

    def encode(self, text):
        return [int(t) for t in self.tokenizer.encode(text)]

    def single(self, prompt_ids, n):
        """Greedy single-stream og.Generator run: the reference ids (as decode.py does it)."""
        og = self.og
        params = og.GeneratorParams(self.model)
        max_length = max(len(prompt_ids) + n, self.window)
        params.set_search_options(do_sample=False, max_length=min(max_length, self.context_length))
        generator = og.Generator(self.model, params)
        generator.append_tokens(prompt_ids)
        ids = []
        while not generator.is_done() and len(ids) < n:
            generator.generate_next_token()
            ids.append(int(generator.get_next_tokens()[0]))
        return ids

    def round(self, prompts, c, n, session_tokens):
        """c requests begun at once, then run() until done; per-request records like moebox's."""
        og, engine = self.og, self.engine
        import numpy as np

        buffer = engine.create_event_buffer(max(64, 4 * c))
        requests, records = [], []
        origin = time.perf_counter()
        for i in range(c):
            options = og.RequestOptions()
            options.set_max_session_tokens(session_tokens)
            request = engine.create_request(options=options)
            turn = og.TurnOptions(request)
            turn.set_do_sample(False)
            turn.set_max_generated_tokens(n)
            ids = np.array(prompts[i % len(prompts)], dtype=np.int32)
            submitted = time.perf_counter() - origin
            request.begin_turn(ids, turn)
            requests.append(request)
            records.append({"prompt_index": i % len(prompts), "submitted_s": submitted, "ttft_s": None,
                            "token_times_s": [], "output_ids": [], "done_s": None, "generated": 0,
                            "finish_reason": None})
        by_id = {id(r): i for i, r in enumerate(requests)}
        steps, max_rows, errors = 0, 0, []
        TOKEN, FINISHED, FAILED = (int(og.EngineEventFlags.TOKEN), int(og.EngineEventFlags.TURN_FINISHED),
                                   int(og.EngineEventFlags.FAILED))
        while engine.has_pending_requests():
            engine.run(buffer)
            now = time.perf_counter() - origin
            steps += 1
            max_rows = max(max_rows, len(buffer))
            for k in range(len(buffer)):
                event = buffer[k]
                i = by_id.get(id(event.request))
                if i is None:
                    i = next(j for j, r in enumerate(requests) if r == event.request)
                rec = records[i]
                flags = int(event.flags)
                if flags & FAILED:
                    errors.append(f"request {i}: {event.error_code} {event.finish_reason}")
                    rec["done_s"] = now
                    continue
                if flags & TOKEN and event.token is not None:
                    if rec["ttft_s"] is None:
                        rec["ttft_s"] = now - rec["submitted_s"]
                    rec["token_times_s"].append(now)
                    rec["output_ids"].append(int(event.token))
                if flags & FINISHED:
                    rec["done_s"] = now
                    rec["finish_reason"] = str(event.finish_reason).split(".")[-1].lower()
                    rec["generated"] = int(event.usage.generated_tokens) if event.usage else len(rec["output_ids"])
        for request in requests:
            request.close()
        if errors:
            raise RuntimeError("genai Engine: " + "; ".join(errors[:4]))
        for rec in records:
            if rec["ttft_s"] is None or rec["done_s"] is None:
                raise RuntimeError(f"genai Engine: request {rec['prompt_index']} produced no token or no finish")
        return records, {"runs": steps, "max_rows_per_run": max_rows}

    def mixed_length_probe(self, a, b, session_tokens):
        """Two prompts of different lengths in one static batch, on an Engine of its own (a failed
        static batch leaves the Engine unhealthy): the error genai reports, if any."""
        main_engine = self.engine
        self.engine = self.og.Engine(self.model)
        try:
            self.round([a, b], 2, 2, session_tokens)
            return "ok"
        except Exception as e:  # noqa: BLE001 - the message is the finding
            try:  # the cause is in the unhealthy Engine's next answer
                self.engine.create_request()
            except Exception as cause:  # noqa: BLE001
                return str(cause)
            return str(e)
        finally:
            self.engine = main_engine


# --- prompts ----------------------------------------------------------------------------------

def make_prompts(genai, length, count, n, log):
    """count prompts of exactly `length` tokens, preferring ones that reach n tokens without EOS."""
    stream = []
    for text in TEXTS:
        stream += genai.encode(text + " ")
    candidates = [stream[i:i + length] for i in range(0, len(stream) - length + 1, max(1, length // 2))]
    good, stopping = [], []
    for ids in candidates:
        ref = genai.single(ids, n)
        (good if len(ref) >= n and not ref[-1] in genai.eos else stopping).append((ids, ref))
        if len(good) >= count:
            break
    log(f"  prompts: {len(good)} of {len(good) + len(stopping)} candidates reach {n} tokens without EOS")
    chosen = good + stopping[: max(0, count - len(good))]
    return [p for p, _ in chosen], [r for _, r in chosen]


# --- main -------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moebox", required=True, type=Path, help="path of the moebox binary (release build)")
    ap.add_argument("--model", required=True, type=Path, action="append", help="model folder (repeatable)")
    ap.add_argument("--concurrency", default="1,4,16,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=32, help="tokens of every prompt")
    ap.add_argument("--prompts", type=int, default=8, help="distinct prompts (requests take them in turn)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--intra-op-threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads for both engines; default: the physical cores")
    ap.add_argument("--no-short", action="store_true", help="skip the short-request-under-load scenario")
    ap.add_argument("--long-max-tokens", type=int, default=256)
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--busy-share", type=float, default=0.05)
    ap.add_argument("--busy-retries", type=int, default=3)
    args = ap.parse_args()

    import onnxruntime_genai as og

    levels = [int(c) for c in args.concurrency.split(",") if c]
    if args.intra_op_threads is None:
        args.intra_op_threads = physical_cores()
    threads = args.intra_op_threads
    facts = machine_facts()
    cpus = os.cpu_count() or 1
    meter = OtherLoad(args.busy_share)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"# batch benchmark, {facts['date_utc']}: {facts['cpu']}, nproc {facts['nproc']}, load average "
        f"{facts['loadavg'][0]:.2f}; onnxruntime_genai {og.__version__}; intra-op threads {threads} for both; "
        f"N = {args.max_tokens}, {args.reps} reps, levels {levels}")

    redone = {"moebox": 0, "genai": 0}
    kept_busy = 0
    results = []
    for model_dir in args.model:
        log(f"{model_dir}:")
        params = count_parameters(model_dir / "model.onnx")
        genai = GenaiEngine(model_dir, threads)
        prompts, refs = make_prompts(genai, args.prompt_tokens, args.prompts, args.max_tokens, log)
        # The same length moebox's rows get (prompt + completion, rounded up to 64 positions).
        session_tokens = min(genai.context_length,
                             -(-(args.prompt_tokens + args.max_tokens) // 64) * 64)
        mixed = genai.mixed_length_probe(genai.encode(PROBE_PROMPT), prompts[0], session_tokens)
        log(f"  genai static batch with mixed prompt lengths: {mixed}")
        prompt_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(prompts, prompt_file)
        prompt_file.close()
        model_result = {"model": model_dir.name, "params": params, "capabilities": genai.capabilities,
                        "mixed_length": mixed, "prompts": prompts, "reference_ids": refs, "levels": []}
        for c in levels:
            # genai: one untimed round per level, as moebox bench does in its process.
            genai.round(prompts, c, min(args.max_tokens, c + 16), session_tokens)
            m_runs, g_runs, m_memory = [], [], []
            ids_equal = True
            mismatches, single_diffs = [], []
            counts = {"pairs": 0, "moebox_eq_genai": 0, "moebox_eq_single": 0, "genai_eq_single": 0}
            for rep in range(args.reps):
                for attempt in range(args.busy_retries + 1):
                    report = moebox_bench(args.moebox, model_dir,
                                          ["--prompts", prompt_file.name, "--concurrency", str(c),
                                           "--max-tokens", str(args.max_tokens), "--scenarios", "levels",
                                           "--reps", "1", "--warmup", "1"], threads)
                    level = report["levels"][0]
                    if not busy(level["other_cpu_s"], level["wall_s"], cpus, args.busy_share):
                        break
                    log(f"    moebox c={c}: other processes took {level['other_cpu_share'] * 100:.0f}% of the CPUs; "
                        f"{'again' if attempt < args.busy_retries else 'kept anyway'}")
                    if attempt < args.busy_retries:
                        redone["moebox"] += 1
                        time.sleep(2.0)
                    else:
                        kept_busy += 1
                m = summarize(level["requests"], c)
                m["requests"] = level["requests"]
                m["other_cpu_share"] = level["other_cpu_share"]
                m["cores_used"] = level["cpu_cores_used"]
                m_runs.append(m)
                m_memory.append(report["memory"])
                setup = report["setup"]

                def genai_round():
                    return genai.round(prompts, c, args.max_tokens, session_tokens)

                (g_records, g_info), g_share, g_redone, g_busy = run_quiet_counted(
                    meter, genai_round, args.busy_retries, "genai", log)
                redone["genai"] += g_redone
                kept_busy += int(g_busy)
                g = summarize(g_records, c)
                g.update(g_info)
                g["requests"] = g_records
                g["other_cpu_share"] = g_share
                g_runs.append(g)
                # ids, per request: moebox (batched) vs genai's Engine at the same level (the
                # request with the same index, hence the same prompt), and each engine's batched
                # ids vs the single-stream og.Generator reference.
                g_by_index = {i: gr for i, gr in enumerate(g_records)}
                m_by_index = {mr["request_index"]: mr for mr in level["requests"]}
                for i in range(c):
                    mr, gr = m_by_index[i], g_by_index[i]
                    ref = strip_eos(refs[gr["prompt_index"]], genai.eos)
                    m_ids, g_ids = strip_eos(mr["output_ids"], genai.eos), strip_eos(gr["output_ids"], genai.eos)
                    counts["pairs"] += 1
                    counts["moebox_eq_genai"] += m_ids == g_ids
                    counts["moebox_eq_single"] += m_ids == ref
                    counts["genai_eq_single"] += g_ids == ref
                    if m_ids != g_ids:
                        ids_equal = False
                        mismatches.append({"rep": rep, "request": i, "prompt": gr["prompt_index"],
                                           "first_difference": first_difference(m_ids, g_ids)})
                    for engine_name, ids in (("moebox", m_ids), ("genai", g_ids)):
                        if ids != ref:
                            single_diffs.append({"engine": engine_name, "rep": rep, "request": i,
                                                 "prompt": gr["prompt_index"],
                                                 "first_difference": first_difference(ids, ref)})
                log(f"  c={c} rep {rep}: moebox {m['aggregate_tps']:.1f} tok/s TTFT p50 {m['ttft_p50'] * 1e3:.1f} ms "
                    f"p95 {m['ttft_p95'] * 1e3:.1f} ms | genai {g['aggregate_tps']:.1f} tok/s TTFT p50 "
                    f"{g['ttft_p50'] * 1e3:.1f} ms p95 {g['ttft_p95'] * 1e3:.1f} ms ({g['max_rows_per_run']} rows "
                    f"max per run) | others' CPU {m['other_cpu_share'] * 100:.0f}% / {g_share * 100:.0f}%"
                    + f" | ids moebox = genai {counts['moebox_eq_genai']}/{counts['pairs']}, = single stream: "
                    f"moebox {counts['moebox_eq_single']}, genai {counts['genai_eq_single']}")
            model_result["levels"].append({"concurrency": c, "moebox": m_runs, "genai": g_runs,
                                           "moebox_memory": m_memory, "moebox_setup": setup,
                                           "ids_equal": ids_equal, "mismatches": mismatches,
                                           "single_stream_differences": single_diffs, "ids_counts": counts})
        if not args.no_short:
            short_runs = []
            for rep in range(args.reps):
                for attempt in range(args.busy_retries + 1):
                    report = moebox_bench(args.moebox, model_dir,
                                          ["--prompts", prompt_file.name, "--scenarios", "short", "--reps", "1",
                                           "--long-requests", "15", "--long-max-tokens", str(args.long_max_tokens),
                                           "--short-probes", "10", "--short-max-tokens", "8",
                                           "--short-prompt", PROBE_PROMPT], threads)
                    s = report["short_under_load"]
                    r = s["runs"][0]
                    if not busy(r["other_cpu_s"], r["wall_s"], cpus, args.busy_share):
                        break
                    log(f"    moebox short: other processes took {r['other_cpu_share'] * 100:.0f}% of the CPUs; "
                        f"{'again' if attempt < args.busy_retries else 'kept anyway'}")
                    if attempt < args.busy_retries:
                        redone["moebox"] += 1
                        time.sleep(2.0)
                    else:
                        kept_busy += 1
                log(f"  short under load rep {rep}: unloaded {s['unloaded_ttft_s']['p50'] * 1e3:.1f} ms, loaded "
                    f"{s['loaded_ttft_s']['p50'] * 1e3:.1f} ms, long running at probes {r['long_running_at_probe']}")
                short_runs.append({"summary": s, "memory": report["memory"]})
            model_result["short"] = short_runs
        os.unlink(prompt_file.name)
        results.append(model_result)

    facts["loadavg_end"] = os.getloadavg()
    print_report(results, args, facts, threads, redone, kept_busy)
    if args.json_out:
        args.json_out.write_text(json.dumps({"facts": facts, "args": vars(args) | {"moebox": str(args.moebox),
                                             "model": [str(m) for m in args.model],
                                             "json_out": str(args.json_out)},
                                             "redone": redone, "kept_busy": kept_busy, "results": results},
                                            indent=1, default=str))
    ok = all(level["ids_equal"] for r in results for level in r["levels"])
    return 0 if ok else 1


def run_quiet_counted(meter, fn, retries, what, log):
    """decode.py's run_quiet, reporting (result, share, redone, kept busy)."""
    for attempt in range(retries + 1):
        result, share, is_busy = meter.measure(fn)
        if not is_busy:
            return result, share, attempt, False
        log(f"    {what}: other processes took {share * 100:.0f}% of the CPUs; "
            f"{'again' if attempt < retries else 'kept anyway'}")
        if attempt < retries:
            time.sleep(2.0)
    return result, share, retries, True


def print_report(results, args, facts, threads, redone, kept_busy):
    for r in results:
        print(f"**{r['model']}** ({human_params(r['params'])} parameters; {len(r['prompts'])} prompts of "
              f"{args.prompt_tokens} tokens, {args.max_tokens} new tokens per request, greedy)")
        print()
        print("| concurrency | moebox tok/s | genai Engine tok/s | ratio | moebox TTFT p50 ms | moebox TTFT p95 ms "
              "| genai TTFT p50 ms | genai TTFT p95 ms | moebox inter-token p50 ms | genai inter-token p50 ms "
              "| generated | ids moebox = genai | ids = single stream (moebox / genai) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        single = None
        for level in r["levels"]:
            m, g = level["moebox"], level["genai"]
            mt = [x["aggregate_tps"] for x in m]
            gt = [x["aggregate_tps"] for x in g]
            if level["concurrency"] == 1:
                single = statistics.median(mt)
            gen = sorted({x["generated"] for x in m} | {x["generated"] for x in g})
            print(f"| {level['concurrency']} | {med_range(mt)} | {med_range(gt)} | "
                  f"{statistics.median(mt) / statistics.median(gt):.2f} | "
                  f"{med_range([x['ttft_p50'] for x in m], 1e3)} | {med_range([x['ttft_p95'] for x in m], 1e3)} | "
                  f"{med_range([x['ttft_p50'] for x in g], 1e3)} | {med_range([x['ttft_p95'] for x in g], 1e3)} | "
                  f"{statistics.median([x['itl_p50'] for x in m]) * 1e3:.2f} | "
                  f"{statistics.median([x['itl_p50'] for x in g]) * 1e3:.2f} | "
                  f"{'/'.join(str(x) for x in gen)} | "
                  f"{'yes' if level['ids_equal'] else 'NO'} ({level['ids_counts']['moebox_eq_genai']}/"
                  f"{level['ids_counts']['pairs']}) | {level['ids_counts']['moebox_eq_single']} / "
                  f"{level['ids_counts']['genai_eq_single']} of {level['ids_counts']['pairs']} |")
        print()
        if single:
            scaling = ", ".join(
                f"c={lv['concurrency']}: {statistics.median([x['aggregate_tps'] for x in lv['moebox']]) / single:.2f}×"
                for lv in r["levels"])
            print(f"moebox aggregate / moebox c=1: {scaling}. genai Engine rows per model run (max): "
                  + ", ".join(f"c={lv['concurrency']}: {max(x['max_rows_per_run'] for x in lv['genai'])}"
                              for lv in r["levels"])
                  + f"; its capabilities: {r['capabilities']}.")
            print(f"genai static batch with mixed prompt lengths: {r['mixed_length']}")
            print()
        print("moebox memory (MiB; median over the reps of each level's process: rows = c):")
        print()
        print("| concurrency | RSS after ORT load | after model load | after KV + warm-up | end (anon + file) "
              "| peak (VmHWM) | weights on disk | KV cache | peak − weights − KV |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        mib = lambda b: b / 1048576  # noqa: E731
        for level in r["levels"]:
            mem = level["moebox_memory"]
            med = lambda k: statistics.median([x[k] for x in mem])  # noqa: E731
            print(f"| {level['concurrency']} | {mib(med('rss_runtime_bytes')):.1f} | {mib(med('rss_model_bytes')):.1f} | "
                  f"{mib(med('rss_kv_bytes')):.1f} | {mib(med('rss_end_bytes')):.1f} ({mib(med('rss_anon_end_bytes')):.1f} + "
                  f"{mib(med('rss_file_end_bytes')):.1f}) | {mib(med('peak_bytes')):.1f} | "
                  f"{mib(med('weights_bytes')):.1f} | {mib(med('kv_cache_bytes')):.1f} | "
                  f"{mib(med('peak_beyond_weights_and_kv_bytes')):.1f} |")
        print()
        if r.get("short"):
            runs = [x["summary"] for x in r["short"]]
            s0 = runs[0]
            print(f"moebox short request ({s0['probe_prompt_tokens']} prompt tokens, {s0['probe_max_tokens']} new) "
                  f"while {s0['long_requests']} long requests ({args.prompt_tokens}-token prompts, "
                  f"{s0['long_max_tokens']} new tokens) decode; 10 probes per rep at evenly spread phases of a scheduler step:")
            print()
            print("| TTFT unloaded ms | TTFT under load ms | loaded / unloaded | long requests' inter-token p50 ms "
                  "| long requests running at each probe |")
            print("|---:|---:|---:|---:|---|")
            un = [x["unloaded_ttft_s"]["p50"] for x in runs]
            lo = [x["loaded_ttft_s"]["p50"] for x in runs]
            ratios = [x["ratio"] for x in runs]
            itl = [rr["long_inter_token_s"]["p50"] for x in runs for rr in x["runs"]]
            running = sorted({n for x in runs for rr in x["runs"] for n in rr["long_running_at_probe"]})
            print(f"| {med_range(un, 1e3, 2)} | {med_range(lo, 1e3, 2)} | {med_range(ratios, 1, 2)} | "
                  f"{med_range(itl, 1e3, 2)} | {'/'.join(map(str, running))} |")
            print()
    print(f"Median [min–max] of {args.reps} runs per engine and level (TTFT columns: median of the runs' p50 / "
          f"p95); ratio = moebox / genai median aggregate tok/s. {facts['cpu']}, nproc {facts['nproc']}, load "
          f"average {facts['loadavg'][0]:.2f} at start, {facts['loadavg_end'][0]:.2f} at end; {facts['date_utc']}; "
          f"intra-op threads: {threads} for both engines.")
    print(f"Runs redone because other processes took more than {args.busy_share * 100:.0f}% of the CPUs: "
          f"moebox {redone['moebox']}, genai {redone['genai']}; busy runs kept after {args.busy_retries} retries: "
          f"{kept_busy}.")


if __name__ == "__main__":
    sys.exit(main())
