"""`selfprune prune`: score, plan and physically remove heads and channels; save the smaller model."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model at a uniform ratio or per-layer rates and save it",
        description="Structured pruning: removes attention heads (GQA-aware) and MLP channels per layer.",
    )
    p.add_argument("model", metavar="MODEL", help="a local model directory, a hub id, or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--ratio", type=float, help="fraction of attention/MLP parameters to remove in every layer, in [0, 1)")
    p.add_argument("--rates", metavar="FILE",
                   help="JSON per-layer rates: a list of numbers, or of {\"attn\": a, \"mlp\": m} (e.g. a search's best.json)")
    add_pruning_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the pruned checkpoint")
    p.set_defaults(handler=run)


def add_pruning_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that prunes (prune, search, run)."""
    p.add_argument("--metric", default="wanda-sp", help="importance metric: wanda-sp (default), flap, magnitude")
    p.add_argument("--calib", default="lambada", metavar="SOURCE",
                   help="calibration text: lambada (offline, default), wikitext2-train, c4, or a text FILE")
    p.add_argument("--calib-samples", type=int, default=32, metavar="N", help="calibration sequences (default 32)")
    p.add_argument("--calib-seqlen", type=int, default=256, metavar="L", help="tokens per calibration sequence (default 256)")
    p.add_argument("--attn-granularity", default="head", choices=["head", "group"],
                   help="head: any number of query heads per kept KV group (default); group: whole KV groups only")
    p.add_argument("--mlp-multiple", type=int, default=1, metavar="K", help="round MLP widths to a multiple of K (e.g. 8, 32)")
    p.add_argument("--bias-compensation", action=argparse.BooleanOptionalAction, default=None,
                   help="add the mean contribution of removed channels to the output bias, as FLAP does (default: on, off for magnitude; "
                        "--no-bias-compensation gives plain Wanda-sp as in Self-Pruner)")
    p.add_argument("--seed", type=int, default=0, help="random seed (calibration sampling)")


def print_summary(summary: dict) -> None:
    print("layer  heads  kv  mlp-width")
    for i, layer in enumerate(summary["layers"]):
        print(f"{i:5d}  {layer['heads']:5d}  {layer['kv_heads']:2d}  {layer['mlp']:9d}")
    before, after = summary["params_before"], summary["params_after"]
    print(
        f"parameters: {before:,} -> {after:,} (removed {summary['params_removed']:,}, "
        f"{summary['achieved_ratio_total']:.1%} of the model; "
        f"{summary['achieved_ratio_prunable']:.1%} of attention+MLP, requested {summary['requested_ratio']:.1%})"
    )


def run(args) -> int:
    from selfprune.errors import SelfpruneError
    from selfprune.models.adapter import get_adapter
    from selfprune.models.loading import load_model
    from selfprune.pruning.checkpoint import prepare_out_dir
    from selfprune.pruning.pipeline import check_metric, check_ratio, prune_model, read_rates
    from selfprune.pruning.plan import validate_rates

    # Validate everything cheap before loading a model.
    if (args.ratio is None) == (args.rates is None):
        raise SelfpruneError("give exactly one of --ratio R or --rates FILE")
    check_metric(args.metric)
    if args.ratio is not None:
        check_ratio(args.ratio)
    rates = read_rates(args.rates) if args.rates else None
    if args.calib_samples < 1 or args.calib_seqlen < 2:
        raise SelfpruneError("--calib-samples must be >= 1 and --calib-seqlen >= 2")
    prepare_out_dir(args.out)

    model, tokenizer = load_model(args.model)
    adapter = get_adapter(model)
    attn_rates = mlp_rates = None
    if rates:
        attn_rates = validate_rates(rates[0], adapter.num_layers, f"--rates {args.rates} (attention)")
        mlp_rates = validate_rates(rates[1], adapter.num_layers, f"--rates {args.rates} (MLP)")
    result = prune_model(
        model, tokenizer, ratio=args.ratio, attn_rates=attn_rates, mlp_rates=mlp_rates, metric=args.metric,
        calib=args.calib, calib_samples=args.calib_samples, calib_seqlen=args.calib_seqlen, seed=args.seed,
        attn_granularity=args.attn_granularity, mlp_multiple=args.mlp_multiple,
        bias_compensation=args.bias_compensation,
    )
    result.summary["model"] = args.model
    result.model.config.selfprune["base_model"] = args.model  # `selfprune bench` compares against it
    out = result.save(args.out)
    print_summary(result.summary)
    print(f"saved to {out}")
    return 0
