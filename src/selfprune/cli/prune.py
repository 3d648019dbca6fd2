"""`selfprune prune`: score, plan and physically remove heads and channels; save the smaller model."""

from __future__ import annotations


def register(sub) -> None:
    from selfprune.cli.options import PLACEMENT, add_option_flags, section_paths

    p = sub.add_parser(
        "prune",
        help="prune a model at a uniform ratio or per-layer rates and save it",
        description="Structured pruning: removes attention heads (GQA-aware) and MLP channels per layer.",
    )
    p.add_argument("model", metavar="MODEL", help="a local model directory, a .gguf file, a hub id, or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--ratio", type=float, help="fraction of attention/MLP parameters to remove in every layer, in [0, 1)")
    p.add_argument("--rates", metavar="FILE",
                   help="JSON per-layer rates: a list of numbers, or of {\"attn\": a, \"mlp\": m} (e.g. a search's best.json)")
    add_option_flags(p, section_paths("prune") + ["seed"] + PLACEMENT)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the pruned checkpoint: new or empty (or a pruned model, with --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the pruned model selfprune wrote in --out earlier (kept until the new one is complete)")
    p.set_defaults(handler=run)


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


# What decides which heads and channels a rate keeps: a search scored its candidates with these.
SEARCH_PRUNE_FIELDS = ("metric", "calib", "calib_samples", "calib_seqlen", "attn_granularity", "mlp_multiple",
                       "bias_compensation")


def search_settings(rates_file: str):
    """(prune options, seed, source) of the search that wrote ``rates_file``, or None for rates from
    elsewhere: what the rates file itself records (``made_with``), else -- a file from before it did --
    a `selfprune search` folder's config.json (beside the rates, or one up for an operator's own folder),
    or a `selfprune run` directory's config.yaml (DIR/search/<operator>/best.json)."""
    import json
    from pathlib import Path

    import yaml

    try:
        made_with = json.loads(Path(rates_file).read_text()).get("made_with")
    except (OSError, ValueError, AttributeError):
        made_with = None
    if isinstance(made_with, dict) and isinstance(made_with.get("prune"), dict):
        prune = {k: made_with["prune"][k] for k in SEARCH_PRUNE_FIELDS if k in made_with["prune"]}
        return prune, made_with.get("seed", 0), rates_file
    folder = Path(rates_file).parent
    for path in (folder / "config.json", folder.parent / "config.json", folder.parent.parent / "config.yaml"):
        if path.is_file():
            try:
                text = path.read_text()
                config = json.loads(text)["config"] if path.suffix == ".json" else yaml.safe_load(text)
                prune = {k: config["prune"][k] for k in SEARCH_PRUNE_FIELDS if k in config["prune"]}
                return prune, config.get("seed", 0), path
            except (ValueError, KeyError, TypeError, yaml.YAMLError):
                return None  # not a search's config: the rates alone
    return None


def run(args) -> int:
    from selfprune.api import prune
    from selfprune.cli.options import overrides_from, placement_from
    from selfprune.config import section_options, top_level_value
    from selfprune.errors import SelfpruneError
    from selfprune.models.loading import resolve_model_path
    from selfprune.outputs import same_path
    from selfprune.pruning.checkpoint import prepare_out_dir
    from selfprune.data.calibration import check_calib
    from selfprune.pruning.metrics import get_metric
    from selfprune.pruning.pipeline import check_ratio, check_rates_layers, read_rates

    # Validate everything cheap before loading a model.
    if (args.ratio is None) == (args.rates is None):
        raise SelfpruneError("give exactly one of --ratio R or --rates FILE")
    given = overrides_from(args)
    searched = search_settings(args.rates) if args.rates else None
    if searched:  # prune as the search scored: the same importance keeps the same heads and channels
        search_prune, search_seed, config_path = searched
        differs = [f"--{k.replace('_', '-')} {v} (the search's {search_prune[k]})"
                   for k, v in given.get("prune", {}).items() if k in search_prune and search_prune[k] != v]
        if "seed" in given and given["seed"] != search_seed:
            differs.append(f"--seed {given['seed']} (the search's {search_seed})")
        given = {**given, "prune": {**search_prune, **given.get("prune", {})}, "seed": given.get("seed", search_seed)}
        print(f"calibration and importance as the search that wrote the rates ({config_path}): "
              f"{given['prune']['metric']} on {given['prune']['calib']}, {given['prune']['calib_samples']} x "
              f"{given['prune']['calib_seqlen']} tokens, seed {given['seed']}")
        if differs:
            print("note: " + ", ".join(differs) + ": the pruned model keeps other heads and channels than the "
                  "search scored")
    options = section_options("prune", given.get("prune", {}))
    if args.ratio is not None:
        check_ratio(args.ratio)
    if get_metric(options.metric).needs_activations or options.compensates():  # the calibration text is read
        check_calib(options.calib)
    rates = read_rates(args.rates) if args.rates else None
    model_path = resolve_model_path(args.model)
    if rates is not None:
        check_rates_layers(rates, model_path)
    if same_path(args.out, model_path):
        raise SelfpruneError(f"--out '{args.out}' is the model being pruned; write the pruned model elsewhere")
    prepare_out_dir(args.out, overwrite=args.overwrite)

    seed = top_level_value("seed", given.get("seed", 0))
    result = prune(args.model, ratio=args.ratio, rates=rates, options=options, seed=seed, rates_source=f"--rates {args.rates}",
                   **placement_from(given))
    out = result.save(args.out, overwrite=args.overwrite)
    print_summary(result.summary)
    print(f"saved to {out}")
    return 0
