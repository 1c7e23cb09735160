#!/usr/bin/env python3
"""Single-stream greedy decode benchmark: moebox against onnxruntime-genai.

    python decode.py --moebox target/release/moebox --model tests/fixtures/tiny-moe \\
        --model /work/cache/bench-moe [--new-tokens 256] [--reps 5] [--warmup 1] [--json-out FILE]

Run it with the reference venv's python (tests/fixtures/reference-venv.sh): it needs only the
standard library, numpy and onnxruntime_genai. tests/bench/decode.sh does the setup and runs it.

For every model and every prompt of a fixed set, both engines generate N new tokens greedily from
the raw prompt (no chat template), one sequence at a time, on the CPU, with the same ONNX Runtime
library (1.31.1: onnxruntime-genai 0.18.0 dlopens the onnxruntime wheel's copy, moebox the one
ORT_DYLIB_PATH names) and the same, explicit, intra-op thread count.

Threads: the engines' *defaults* differ. moebox passes engine.intra_op_threads = 0, i.e. ONNX
Runtime's default, one thread per physical core; onnxruntime-genai 0.18.0 does not leave it to ONNX
Runtime but sets max(1, min(16, std::thread::hardware_concurrency() / 2)) unless genai_config.json
says otherwise, i.e. half the logical CPUs (1 on a 2-vCPU machine). So by default both get
--intra-op-threads = the number of physical cores (what moebox uses by default), passed to moebox
through a config file (engine.intra_op_threads) and to genai through og.Config.overlay
(session_options.intra_op_num_threads). --intra-op-threads 0 runs each engine with its own default
instead (not a like-for-like comparison where the two differ).

Definitions (identical for both engines):

  prefill    wall time from the start of the prompt's forward pass until the first new token
             has been chosen (forward over the prompt + sampling of token 1). KV cache allocation
             and model load are excluded.
  decode     (generated - 1) / (wall time from the first token until the last token has been
             chosen): each of those steps is one forward pass over one token plus sampling
             (moebox also detokenizes each token and checks stop sequences; the genai loop here
             does not detokenize).

moebox: one `moebox generate --model M --prompt P --max-tokens N --temperature 0 --timing --json`
process per run; the numbers are parsed from its stderr `timing:` line, the ids from its JSON.
Every moebox run therefore measures a freshly created ONNX Runtime session.

onnxruntime-genai: per repetition a fresh og.Model is loaded (untimed), so its first generation
is also on a fresh session ("cold", the column compared with moebox); a second generation on the
same, now warm, model is timed as well and reported separately (prefill "warm"). The loop is
append_tokens(prompt) + generate_next_token() for the first token, then generate_next_token()
until token_count() == prompt + N or is_done() (EOS).

Repetitions alternate moebox and genai runs so that drifting machine load hits both alike. The
report gives the median and [min, max] over the repetitions, and checks that both engines'
greedy output ids are identical (and stable across repetitions); it exits 1 if they are not.
A timed run during which other processes took more than --busy-share of the CPUs (/proc/stat
busy time less this process's and its children's CPU time) is redone, up to --busy-retries times:
2 spinning intra-op threads on a 2-CPU machine lose more than half their speed to a concurrent
build.

Prompts: chosen so that greedy search runs to N = 256 new tokens without an EOS on both the tiny
fixture and the bench model (random-weight models stop at EOS now and then); "new tokens" in the
table is what was actually generated.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# Short (9 tokens), medium (47) and long (174) prompts with both models' tokenizer.
PROMPTS = [
    "    return a + b",
    "Once upon a time there was a little robot who wanted to learn how to count: one, two, three, four,",
    "Revenue increased by 12 percent, while operating expenses decreased slightly compared to last year. "
    "Please summarise the quarterly report and list the three largest risks for the client. "
    "Tax filings are due on the fifteenth of April; late submissions incur a penalty and interest. "
    "The server runs two GPUs and serves a mixture of experts language model to the staff of the firm.",
]

TIMING_RE = re.compile(
    r"timing: load (?P<load>[\d.]+)s, prompt (?P<prompt>\d+) tokens, prefill (?P<prefill>[\d.]+)s, "
    r"generated (?P<generated>\d+) tokens in (?P<total>[\d.]+)s, decode (?P<tps>[\d.]+) tokens/s, "
    r"finish (?P<finish>\w+)"
)


# --- parameter count from model.onnx (no onnx package needed) -------------------------------

def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf):
    """Yields (field number, wire type, value) of one protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def count_parameters(model_onnx):
    """Elements of all initializers, less the RoPE cos/sin caches (which are not weights).

    ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.dims = 1, TensorProto.name = 8.
    The weights themselves live in model.onnx.data, which is not read.
    """
    data = Path(model_onnx).read_bytes()
    total = 0
    for field, _, graph in _fields(data):
        if field != 7:
            continue
        for gfield, _, tensor in _fields(graph):
            if gfield != 5:
                continue
            dims, name = [], ""
            for tfield, wire, value in _fields(tensor):
                if tfield == 1 and wire == 0:
                    dims.append(value)
                elif tfield == 1 and wire == 2:
                    j = 0
                    while j < len(value):
                        d, j = _varint(value, j)
                        dims.append(d)
                elif tfield == 8:
                    name = value.decode("utf-8", "replace")
            if name in ("cos_cache", "sin_cache"):
                continue
            elements = 1
            for d in dims:
                elements *= d
            total += elements
    return total


def human_params(n):
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


# --- moebox ---------------------------------------------------------------------------------

def moebox_run(binary, model, prompt, new_tokens, config):
    cmd = [str(binary), "generate", "--model", str(model), "--prompt", prompt, "--max-tokens", str(new_tokens),
           "--temperature", "0", "--timing", "--json"]
    if config:
        cmd += ["--config", str(config), "--execution-provider", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"moebox failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr}")
    m = TIMING_RE.search(r.stderr)
    if not m:
        raise RuntimeError(f"no timing line in moebox's stderr:\n{r.stderr}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    generated = int(m["generated"])
    tps = float(m["tps"])
    return {
        "prompt_ids": out["prompt_ids"],
        "output_ids": out["output_ids"],
        "finish": m["finish"],
        "generated": generated,
        "prefill_s": float(m["prefill"]),
        "decode_tps": tps,
        "decode_s": (generated - 1) / tps if tps > 0 else 0.0,
        "load_s": float(m["load"]),
    }


# --- onnxruntime-genai ----------------------------------------------------------------------

class Genai:
    def __init__(self, model_dir, intra_op_threads):
        import onnxruntime_genai as og

        self.og = og
        self.dir = Path(model_dir)
        self.threads = intra_op_threads
        cfg = json.loads((self.dir / "genai_config.json").read_text(encoding="utf-8"))
        self.window = (cfg["model"]["decoder"].get("sliding_window") or {}).get("window_size") or 0
        self.context_length = cfg["model"]["context_length"]
        self.model = None
        self.tokenizer = None
        self.eos = set()

    def load(self):
        og = self.og
        self.model = None
        self.tokenizer = None
        config = og.Config(str(self.dir))
        if self.threads:
            config.overlay(json.dumps(
                {"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}))
        t0 = time.perf_counter()
        self.model = og.Model(config)
        load_s = time.perf_counter() - t0
        self.tokenizer = og.Tokenizer(self.model)
        self.eos = {int(t) for t in self.tokenizer.eos_token_ids}
        return load_s

    def encode(self, text):
        return [int(t) for t in self.tokenizer.encode(text)]

    def run(self, prompt_ids, new_tokens):
        og = self.og
        params = og.GeneratorParams(self.model)
        max_length = len(prompt_ids) + new_tokens
        # onnxruntime-genai 0.18.0 fails when max_length is below the sliding window (see
        # tests/fixtures/reference_generate.py): ask for the window and stop after N ourselves.
        if max_length < self.window:
            max_length = min(self.window, self.context_length)
        params.set_search_options(do_sample=False, max_length=max_length)
        generator = og.Generator(self.model, params)  # KV buffers: allocated here, untimed
        stop_at = len(prompt_ids) + new_tokens
        ids = []
        clock = time.perf_counter
        t0 = clock()
        generator.append_tokens(prompt_ids)
        generator.generate_next_token()
        t1 = clock()
        ids.append(int(generator.get_next_tokens()[0]))
        while not generator.is_done() and generator.token_count() < stop_at:
            generator.generate_next_token()
            ids.append(int(generator.get_next_tokens()[0]))
        t2 = clock()
        del generator
        # Greedy search stopped at an EOS if the last id chosen is one (genai leaves the EOS out of
        # get_sequence but get_next_tokens returns it; ids holds every chosen id, as moebox's do).
        finish = "stop" if ids and ids[-1] in self.eos else "length"
        generated = len(ids)
        decode_s = t2 - t1
        return {
            "output_ids": ids,
            "finish": finish,
            "generated": generated,
            "prefill_s": t1 - t0,
            "decode_s": decode_s,
            "decode_tps": (generated - 1) / decode_s if generated > 1 and decode_s > 0 else 0.0,
        }


# --- other processes' CPU use during a run ----------------------------------------------------

class OtherLoad:
    """CPU time that other processes (and the hypervisor: steal) took while a run went on.

    Busy time of the whole machine from /proc/stat, less this process's and its waited-for
    children's CPU time (getrusage). /proc/stat counts in clock ticks (10 ms), so a run is only
    called busy when the others took more than `share` of the machine *and* more than 3 ticks.
    """

    def __init__(self, share):
        import resource

        self.resource = resource
        self.hz = os.sysconf("SC_CLK_TCK")
        self.cpus = os.cpu_count() or 1
        self.share = share

    def _busy(self):
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / self.hz

    def _own(self):
        r = self.resource
        s, c = r.getrusage(r.RUSAGE_SELF), r.getrusage(r.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def measure(self, fn):
        t0, b0, o0 = time.perf_counter(), self._busy(), self._own()
        result = fn()
        wall = time.perf_counter() - t0
        other = max(0.0, (self._busy() - b0) - (self._own() - o0))
        busy = other > max(self.share * wall * self.cpus, 3.0 / self.hz)
        return result, other / (wall * self.cpus), busy


def run_quiet(meter, fn, retries, what):
    """Runs fn until other processes leave the CPUs alone (at most retries extra times)."""
    for attempt in range(retries + 1):
        result, share, busy = meter.measure(fn)
        if not busy:
            return result, share, attempt, False
        print(f"    {what}: other processes took {share * 100:.0f}% of the CPUs; "
              f"{'again' if attempt < retries else 'kept anyway'}", file=sys.stderr, flush=True)
        time.sleep(2.0)
    return result, share, retries, True


# --- report ---------------------------------------------------------------------------------

def stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_range(s, scale=1.0, digits=1):
    return (f"{s['median'] * scale:.{digits}f} "
            f"[{s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f}]")


def physical_cores():
    """ONNX Runtime's default intra-op thread count: distinct (physical id, core id) pairs."""
    cores, phys = set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                cores.add((phys, value.strip()))
    except OSError:
        pass
    return len(cores) or os.cpu_count() or 1


def machine_facts():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moebox", required=True, type=Path, help="path of the moebox binary (release build)")
    ap.add_argument("--model", required=True, type=Path, action="append", help="model folder (repeatable)")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per engine, model and prompt")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per engine, model and prompt first")
    ap.add_argument("--intra-op-threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads for both engines; default: the number of physical "
                         "cores (ONNX Runtime's default, moebox's default); 0: each engine's own default")
    ap.add_argument("--prompt", action="append", default=None, help="replace the built-in prompt set (repeatable)")
    ap.add_argument("--json-out", type=Path, default=None, help="also write every measurement here")
    ap.add_argument("--busy-share", type=float, default=0.05,
                    help="redo a run when other processes took more than this share of the CPUs meanwhile")
    ap.add_argument("--busy-retries", type=int, default=3, help="how often to redo such a run")
    args = ap.parse_args()

    import onnxruntime_genai as og

    if "ORT_DYLIB_PATH" not in os.environ:
        print("decode.py: ORT_DYLIB_PATH is not set; moebox will look for ONNX Runtime itself", file=sys.stderr)
    prompts = args.prompt or PROMPTS
    facts = machine_facts()
    if args.intra_op_threads is None:
        args.intra_op_threads = physical_cores()
    if args.intra_op_threads:
        threads_text = f"{args.intra_op_threads} for both engines (explicit)"
    else:
        threads_text = (f"each engine's default: moebox {physical_cores()} (ONNX Runtime: physical cores), "
                        f"genai {max(1, min(16, (os.cpu_count() or 2) // 2))} (logical CPUs / 2)")
    versions = {"onnxruntime_genai": og.__version__}
    try:
        import onnxruntime

        versions["onnxruntime (genai's)"] = onnxruntime.__version__
    except ImportError:
        pass
    versions["ORT_DYLIB_PATH (moebox's)"] = os.environ.get("ORT_DYLIB_PATH", "")

    source_text = ""
    try:
        repo = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "crates", "Cargo.toml",
                                "Cargo.lock"], capture_output=True, text=True).stdout.strip().splitlines()
        built = datetime.fromtimestamp(args.moebox.stat().st_mtime, timezone.utc).strftime("%H:%M:%S UTC")
        if head:
            source_text = (f"moebox built {built} from {head}"
                           + (f" plus {len(dirty)} uncommitted paths under crates/, Cargo.*" if dirty else "") + ".")
    except OSError:
        pass
    config_file = None
    if args.intra_op_threads:
        config_file = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        config_file.write(f"[engine]\nexecution_provider = \"cpu\"\nintra_op_threads = {args.intra_op_threads}\n")
        config_file.close()
        config_file = config_file.name

    print(f"# decode benchmark, {facts['date_utc']}: {facts['cpu']}, nproc {facts['nproc']}, "
          f"load average at start {facts['loadavg'][0]:.2f} {facts['loadavg'][1]:.2f} {facts['loadavg'][2]:.2f}",
          file=sys.stderr)
    print(f"# {versions}; intra-op threads: {threads_text}; "
          f"N = {args.new_tokens}, {args.warmup} warm-up + {args.reps} timed runs each", file=sys.stderr)

    meter = OtherLoad(args.busy_share)
    redone = {"moebox": 0, "genai": 0}
    kept_busy = 0
    max_other = 0.0
    rows, records = [], []
    for model_dir in args.model:
        params = count_parameters(model_dir / "model.onnx")
        genai = Genai(model_dir, args.intra_op_threads)
        genai.load()
        for prompt in prompts:
            prompt_ids = genai.encode(prompt)
            m_runs, g_cold, g_warm = [], [], []
            for i in range(args.warmup + args.reps):
                timed = i >= args.warmup
                retries = args.busy_retries if timed else 0
                m, m_share, m_redone, m_busy = run_quiet(
                    meter, lambda: moebox_run(args.moebox, model_dir, prompt, args.new_tokens, config_file),
                    retries, "moebox")
                if m["prompt_ids"] != prompt_ids:
                    raise RuntimeError(f"moebox and genai tokenize {prompt!r} differently: "
                                       f"{m['prompt_ids']} vs {prompt_ids}")

                def genai_runs():
                    load_s = genai.load()  # fresh session: the cold run is comparable with moebox's
                    cold = genai.run(prompt_ids, args.new_tokens)
                    warm = genai.run(prompt_ids, args.new_tokens)
                    cold["load_s"] = load_s
                    return cold, warm

                (cold, warm), g_share, g_redone, g_busy = run_quiet(meter, genai_runs, retries, "genai")
                m["other_cpu_share"], cold["other_cpu_share"], warm["other_cpu_share"] = m_share, g_share, g_share
                if timed:
                    redone["moebox"] += m_redone
                    redone["genai"] += g_redone
                    kept_busy += int(m_busy) + int(g_busy)
                    max_other = max(max_other, m_share, g_share)
                    m_runs.append(m)
                    g_cold.append(cold)
                    g_warm.append(warm)
                print(f"  {model_dir.name} p{len(prompt_ids)} {'run' if timed else 'warm-up'} {i}: "
                      f"moebox {m['decode_tps']:.1f} tok/s prefill {m['prefill_s'] * 1e3:.2f} ms | "
                      f"genai {cold['decode_tps']:.1f} tok/s prefill {cold['prefill_s'] * 1e3:.2f} ms "
                      f"(warm {warm['decode_tps']:.1f} tok/s, {warm['prefill_s'] * 1e3:.2f} ms) | "
                      f"others' CPU {m_share * 100:.0f}% / {g_share * 100:.0f}%",
                      file=sys.stderr, flush=True)
            ref_ids = g_cold[0]["output_ids"]
            ids_equal = all(r["output_ids"] == ref_ids for r in m_runs + g_cold + g_warm)
            generated = sorted({r["generated"] for r in m_runs + g_cold + g_warm})
            row = {
                "model": model_dir.name,
                "params": params,
                "prompt_tokens": len(prompt_ids),
                "new_tokens": generated,
                "finish": sorted({r["finish"] for r in m_runs + g_cold + g_warm}),
                "moebox_decode_tps": stats([r["decode_tps"] for r in m_runs]),
                "genai_decode_tps": stats([r["decode_tps"] for r in g_cold]),
                "genai_warm_decode_tps": stats([r["decode_tps"] for r in g_warm]),
                "moebox_prefill_s": stats([r["prefill_s"] for r in m_runs]),
                "genai_prefill_s": stats([r["prefill_s"] for r in g_cold]),
                "genai_warm_prefill_s": stats([r["prefill_s"] for r in g_warm]),
                "moebox_load_s": stats([r["load_s"] for r in m_runs]),
                "genai_load_s": stats([r["load_s"] for r in g_cold]),
                "ids_equal": ids_equal,
            }
            row["ratio"] = row["moebox_decode_tps"]["median"] / row["genai_decode_tps"]["median"]
            rows.append(row)
            records.append({"row": row, "prompt": prompt, "moebox": m_runs, "genai_cold": g_cold,
                            "genai_warm": g_warm})

    facts["loadavg_end"] = os.getloadavg()
    lines = [
        "| model | params | prompt tokens | new tokens | moebox decode tok/s | genai decode tok/s | ratio "
        "| moebox prefill ms | genai prefill ms | genai prefill ms (warm session) | ids equal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        new = "/".join(str(n) for n in r["new_tokens"])
        if r["finish"] != ["length"]:
            new += f" ({'/'.join(r['finish'])})"
        lines.append(
            f"| {r['model']} | {human_params(r['params'])} | {r['prompt_tokens']} | {new} "
            f"| {fmt_range(r['moebox_decode_tps'])} | {fmt_range(r['genai_decode_tps'])} | {r['ratio']:.2f} "
            f"| {fmt_range(r['moebox_prefill_s'], 1e3, 2)} | {fmt_range(r['genai_prefill_s'], 1e3, 2)} "
            f"| {fmt_range(r['genai_warm_prefill_s'], 1e3, 2)} | {'yes' if r['ids_equal'] else 'NO'} |"
        )
    print("\n".join(lines))
    print()
    print(f"Median [min–max] of {args.reps} runs after {args.warmup} warm-up run(s); ratio = moebox / genai "
          f"median decode tok/s. {facts['cpu']}, nproc {facts['nproc']}, load average "
          f"{facts['loadavg'][0]:.2f} at start, {facts['loadavg_end'][0]:.2f} at end; {facts['date_utc']}; "
          f"intra-op threads: {threads_text}. {source_text}")
    print(f"Runs redone because other processes took more than {args.busy_share * 100:.0f}% of the CPUs "
          f"meanwhile: moebox {redone['moebox']}, genai {redone['genai']}; busy runs kept after "
          f"{args.busy_retries} retries: {kept_busy}; the most other processes took during a kept timed run: "
          f"{max_other * 100:.0f}%.")
    if args.json_out:
        args.json_out.write_text(json.dumps({"facts": facts, "versions": versions, "args": {
            "new_tokens": args.new_tokens, "reps": args.reps, "warmup": args.warmup,
            "intra_op_threads": args.intra_op_threads, "threads": threads_text, "source": source_text,
            "redone": redone, "kept_busy": kept_busy}, "records": records}, indent=1))
    if config_file:
        os.unlink(config_file)
    return 0 if all(r["ids_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
