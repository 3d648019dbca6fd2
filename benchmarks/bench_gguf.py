"""Speed of a pruned model in llama.cpp next to its dense baseline, both exported by `selfprune export`.

Prunes MODEL at --ratio (or takes --pruned DIR), exports the dense model and the pruned checkpoint
through the same exporter for each --outtypes, loads both into llama.cpp (llama-cpp-python) with the
same thread count, and measures prompt processing (a --prompt-tokens prompt on an empty cache) and
generation (--gen-tokens single-token steps on that cache) after warm-up, the two models taking
turns at every prompt and every generated token, keeping medians. Prints tokens/s side by side, the measured speed-ups next to the ideal one
(dense parameters / pruned parameters, counted in the GGUF files) and the file sizes.

    python benchmarks/bench_gguf.py --model default --ratio 0.3 --threads 2 --json gguf_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def gguf_params(path: Path) -> int:
    import gguf

    return sum(int(t.n_elements) for t in gguf.GGUFReader(str(path)).tensors)


def bench(files: dict[str, Path], tokens: list[int], args) -> dict:
    """Median tokens/s of each model, measured alternately so that load from elsewhere hits both alike.

    Prompt processing: ``reset`` then one ``eval`` of the prompt on an empty cache, the models taking
    turns. Generation: after its prompt, each model evaluates the same next token, one at a time
    through its KV cache, the models taking turns at every step; tokens/s = 1 / median step time.
    """
    from llama_cpp import Llama

    prompt, gen = tokens[: args.prompt_tokens], tokens[args.prompt_tokens: args.prompt_tokens + args.gen_tokens]
    models = {name: Llama(str(path), n_ctx=len(prompt) + len(gen) + 8, n_batch=len(prompt), n_ubatch=len(prompt),
                          n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
              for name, path in files.items()}
    pp = {name: [] for name in models}
    tg = {name: [] for name in models}
    names = list(models)
    for r in range(args.warmup + args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            models[name].reset()  # the next eval starts at position 0, dropping the cached keys and values
            t0 = time.perf_counter()
            models[name].eval(prompt)
            if r >= args.warmup:
                pp[name].append(len(prompt) / (time.perf_counter() - t0))
        for token in gen:
            for name in order:
                t0 = time.perf_counter()
                models[name].eval([token])
                if r >= args.warmup:
                    tg[name].append(time.perf_counter() - t0)
    for llm in models.values():
        llm.close()
    return {name: {"pp_tok_s": statistics.median(pp[name]), "tg_tok_s": 1.0 / statistics.median(tg[name]),
                   "pp_runs_tok_s": pp[name], "tg_step_s": tg[name]} for name in models}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="dense model: 'default', a directory or a hub id")
    ap.add_argument("--ratio", type=float, default=0.3, help="uniform pruning ratio (ignored with --pruned)")
    ap.add_argument("--pruned", metavar="DIR", help="use this pruned checkpoint instead of pruning --model")
    ap.add_argument("--mlp-multiple", type=int, default=32,
                    help="round pruned MLP widths to this multiple (32: every matrix quantizes to q8_0)")
    ap.add_argument("--outtypes", default="f16,q8_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--text", default=None, help="text for the token ids (default: WikiText-2 test, if found)")
    ap.add_argument("--workdir", default=None, help="keep the checkpoint and GGUF files here (default: a temp dir)")
    ap.add_argument("--json", metavar="FILE", help="write the measurements, protocol and versions here")
    args = ap.parse_args()

    from selfprune import prune
    from selfprune.export.gguf import export_gguf
    from selfprune.models.loading import resolve_model_path
    from selfprune.report.tables import markdown_table, text_table
    from selfprune.versions import versions

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_gguf-"))
    work.mkdir(parents=True, exist_ok=True)
    dense_dir = resolve_model_path(args.model)
    if args.pruned:
        pruned_dir = Path(args.pruned)
    else:
        pruned_dir = work / f"pruned-{args.ratio}"
        if not (pruned_dir / "config.json").exists():
            print(f"pruning {args.model} at {args.ratio:.0%} into {pruned_dir}", file=sys.stderr)
            prune(args.model, ratio=args.ratio, mlp_multiple=args.mlp_multiple).save(pruned_dir)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    text_path = args.text or str(Path(__file__).resolve().parents[2] / "shared/data/wikitext-2-raw/wiki.test.raw")
    try:
        text = Path(text_path).read_text(encoding="utf-8")[:50000]
    except OSError:
        text = "The quick brown fox jumps over the lazy dog. " * 200
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(tokens) < args.prompt_tokens + args.gen_tokens:
        sys.exit("the text is too short for --prompt-tokens + --gen-tokens")

    results = {}
    for outtype in args.outtypes.split(","):
        files = {}
        for name, src in (("dense", dense_dir), ("pruned", pruned_dir)):
            files[name] = work / f"{name}-{outtype}.gguf"
            summary = export_gguf(src, files[name], outtype=outtype)
            for note in summary["notes"]:
                print(f"{name} {outtype}: {note}", file=sys.stderr)
        speed = bench(files, tokens, args)
        for name, path in files.items():
            speed[name].update(bytes=path.stat().st_size, params=gguf_params(path))
        d, p = speed["dense"], speed["pruned"]
        ideal = d["params"] / p["params"]
        results[outtype] = {"models": speed, "ideal": ideal, "pp_speedup": p["pp_tok_s"] / d["pp_tok_s"],
                            "tg_speedup": p["tg_tok_s"] / d["tg_tok_s"]}

    header = ["outtype", "model", "file MiB", "params (M)", f"pp{args.prompt_tokens} tok/s",
              f"tg{args.gen_tokens} tok/s", "ideal x", "pp x (/ideal)", "tg x (/ideal)"]
    rows = []
    for outtype, r in results.items():
        for name, m in r["models"].items():
            pruned = name == "pruned"
            rows.append((outtype, name, f"{m['bytes'] / 2**20:.1f}", f"{m['params'] / 1e6:.1f}",
                         f"{m['pp_tok_s']:.0f}", f"{m['tg_tok_s']:.1f}",
                         f"{r['ideal']:.2f}" if pruned else "",
                         f"{r['pp_speedup']:.2f} ({r['pp_speedup'] / r['ideal']:.2f})" if pruned else "",
                         f"{r['tg_speedup']:.2f} ({r['tg_speedup'] / r['ideal']:.2f})" if pruned else ""))
    print(text_table(header, rows))
    print()
    print(markdown_table(header, rows))
    protocol = {"threads": args.threads, "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                "repeats": args.repeats, "warmup": args.warmup, "order": "models alternate at every prompt and every generation step", "statistic": "median",
                "ideal": "dense GGUF parameters / pruned GGUF parameters", "model": args.model,
                "pruned": str(pruned_dir), "ratio": None if args.pruned else args.ratio, "mlp_multiple": args.mlp_multiple}
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "protocol": protocol, "versions": versions()},
                                              indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
