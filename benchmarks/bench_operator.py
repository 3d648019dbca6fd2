"""The LLM operator's cost per reply with the local backend: the replies of one call sampled as one
batch, their shared prompt encoded once (a KV cache repeated per row) or once per row.

The prompts are real operator prompts, read from a committed search transcript; both ways run
interleaved on the same prompts, seeds and reply lengths (medians).

    python benchmarks/bench_operator.py --json benchmarks/results/operator/cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

TRANSCRIPT = Path(__file__).resolve().parent / "results/search/quick-r0.3/r0.3/llm-self/s0/transcript.jsonl"


def main(argv=None) -> int:
    import torch

    from selfprune.evolution.llm.backends import LocalBackend
    from selfprune.models import load_model
    from selfprune.versions import versions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--transcript", default=str(TRANSCRIPT))
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--replies", type=int, default=8, help="replies per call (the operator's batch)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    records = [json.loads(line) for line in Path(args.transcript).read_text().splitlines() if line.strip()]
    prompts = [r["prompt"] for r in records if r.get("prompt")][: args.prompts]
    model, tokenizer = load_model(args.model, device=args.device)
    ways = {"prompt once per row": LocalBackend(model, tokenizer, share_prefix=False),
            "prompt encoded once": LocalBackend(model, tokenizer, share_prefix=True)}
    seconds = {name: [] for name in ways}
    tokens = {name: [] for name in ways}
    for r in range(args.repeats + 1):  # the first round warms up
        for i, prompt in enumerate(prompts):
            for name, backend in ways.items():
                t0 = time.perf_counter()
                replies = backend.chat([{"role": "user", "content": prompt}], n=args.replies,
                                       max_tokens=args.max_tokens, seed=1000 * r + i)
                if r:
                    seconds[name].append(time.perf_counter() - t0)
                    tokens[name].append(sum(rep.completion_tokens for rep in replies))
    rows = {name: {"seconds_per_call": statistics.median(s), "seconds_per_reply": statistics.median(s) / args.replies,
                   "reply_tokens_per_call": statistics.mean(tokens[name])} for name, s in seconds.items()}
    base = rows["prompt once per row"]["seconds_per_call"]
    prompt_tokens = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                   return_tensors="pt", return_dict=True)["input_ids"].shape[-1]
                     for q in prompts]
    print(f"{args.model} on {args.device}: {len(prompts)} prompts of {min(prompt_tokens)}-{max(prompt_tokens)} tokens, "
          f"{args.replies} replies of at most {args.max_tokens} tokens per call")
    for name, row in rows.items():
        print(f"{name}: {row['seconds_per_call']:.2f} s per call, {row['seconds_per_reply']:.3f} s per reply "
              f"({base / row['seconds_per_call']:.2f}x), {row['reply_tokens_per_call']:.0f} reply tokens per call")
    if args.json:
        out = {"manifest": {"command": "python benchmarks/bench_operator.py " + " ".join(sys.argv[1:] if argv is None else argv),
                            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "versions": versions(),
                            "device": args.device, "threads": 1},
               "prompt_tokens": prompt_tokens, "rows": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
