"""``selfprune export PRUNED_DIR --gguf OUT.gguf``: one GGUF file that a stock llama.cpp runs."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from selfprune.cli.options import add_option_flags

    p = subparsers.add_parser(
        "export",
        help="write a pruned checkpoint as a GGUF file for llama.cpp / Ollama",
        description="Export a pruned checkpoint (or a dense model directory) to GGUF with its per-layer head, "
        "KV-head and FFN sizes, biases, tokenizer and chat template. Anything llama.cpp cannot compute "
        "exactly is refused (exit 2) and no file is written. See docs/export.md.",
    )
    p.add_argument("pruned", metavar="PRUNED_DIR", help="a selfprune checkpoint, or a dense model directory")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing GGUF file at --gguf")
    # The run's --outtype (output.export_outtype): its default, choices and help. Checked by export_gguf, so a
    # wrong value ends as one "selfprune: error:" line like every other mistake.
    add_option_flags(p, ["output.export_outtype"], grouped=False)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfprune.config import OutputOptions
    from selfprune.export.gguf import export_gguf

    outtype = getattr(args, "output.export_outtype", OutputOptions.model_fields["export_outtype"].default)
    summary = export_gguf(args.pruned, args.gguf, outtype=outtype, overwrite=args.overwrite)
    layers = summary["layers"]
    heads = sum(layer["heads"] for layer in layers)
    ffn = sum(layer["ffn"] for layer in layers)
    print(f"wrote {summary['path']} ({summary['bytes'] / 2**20:.1f} MiB, {summary['outtype']}, llama.cpp arch "
          f"'{summary['arch']}', {len(layers)} layers, {heads} heads, FFN width {ffn} in total)")
    tok = summary["tokenizer"]
    print(f"tokenizer: {tok['model']} / pre '{tok['pre']}', {tok['tokens']} tokens, "
          f"chat template {'included' if tok['chat_template'] else 'none'}")
    for note in summary["notes"]:
        print(f"note: {note}")
    return 0
