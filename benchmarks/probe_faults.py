"""Bad input and faults, tried as a user would: one row per probe with the exit code, whether a
traceback was printed, and whether anything was lost or left half written.

    .venv/bin/python benchmarks/probe_faults.py [--only NAME,...] [--json FILE]

Each probe runs the real ``selfprune`` command in a subprocess against a tiny Llama (the default
model's tokenizer, random weights) or files made for it, and an OpenAI-compatible fault server on
127.0.0.1 for the operator LLM. Expected: exit 2 with one ``selfprune: error:`` line for a user
mistake (exit 0 where the job can go on, e.g. an operator-server fault that falls back), no
traceback, nothing lost. Takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fault_server import FaultServer  # noqa: E402

SEARCH = ["--population", "2", "--generations", "2", "--crossover", "1", "--mutation", "1",
          "--calib-samples", "2", "--calib-seqlen", "32", "--fitness-samples", "1", "--fitness-seqlen", "32", "--quiet"]
RUN = [*SEARCH, "--seqlen", "32", "--max-windows", "1", "--tasks", "", "--no-bench"]
LLM = ["--operator", "llm", "--llm", "openai:tiny", "--llm-timeout", "1", "--llm-share", "1"]
LONGER = ["--generations", "6"]  # enough operator calls for a server that stays down to stop the search


@dataclass
class Probe:
    name: str
    item: str  # the list entry it checks
    argv: Callable[["Workspace"], list[str]]
    expect: int = 2
    watch: Callable[["Workspace"], list[Path]] = lambda ws: []  # paths that must not change
    absent: Callable[["Workspace"], list[Path]] = lambda ws: []  # paths a refused command must not create
    check: Callable[["Workspace", subprocess.CompletedProcess], str] | None = None  # "" when fine
    server: list[str] | None = None  # the fault server's script (then it answers "ok")
    server_then: str = "ok"


@dataclass
class Workspace:
    root: Path
    python: str
    url: str = ""
    notes: dict = field(default_factory=dict)

    def __getattr__(self, name):  # ws.dense, ws.pruned, ...: folders made once by prepare()
        return self.root / name


def run_cli(ws: Workspace, argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": ""}
    env.pop("OPENAI_API_KEY")
    return subprocess.run([ws.python, "-m", "selfprune", *map(str, argv)], capture_output=True, text=True,
                          cwd=ws.root, env=env, timeout=timeout)


def prepare(ws: Workspace) -> None:
    """A tiny Llama with the default model's vocabulary, a pruned copy, and files of every kind."""
    script = textwrap.dedent("""
        import sys, torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
        from selfprune.models.loading import default_model_dir
        tok = AutoTokenizer.from_pretrained(default_model_dir())
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                             tie_word_embeddings=True)
        LlamaForCausalLM(config).save_pretrained(sys.argv[1])
        tok.save_pretrained(sys.argv[1])
    """)
    subprocess.run([ws.python, "-c", script, ws.dense], check=True, capture_output=True)
    done = run_cli(ws, ["prune", ws.dense, "--ratio", "0.3", "--calib-samples", "2", "--calib-seqlen", "32",
                        "--out", ws.pruned])
    assert done.returncode == 0, done.stderr
    (ws.root / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (ws.root / "wiki.txt").write_text(
        "= Test =\n\n The test text is a short article about nothing in particular . " * 200, encoding="utf-8")


def snapshot(paths: list[Path]) -> dict[str, str]:
    out = {}
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*")) if top.exists() else []
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def copy_of(ws: Workspace, src: Path, name: str) -> Path:
    dst = ws.root / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def folder_with(ws: Workspace, name: str, files: dict[str, str | bytes]) -> Path:
    d = ws.root / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for rel, content in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    return d


def edited_checkpoint(ws: Workspace) -> Path:
    d = copy_of(ws, ws.pruned, "edited")
    code = d / "modeling_selfprune.py"
    code.write_text(f"open({str(ws.root / 'remote-code-ran')!r}, 'w').write('x')\n" + code.read_text())
    return d


def foreign_auto_map(ws: Workspace) -> Path:
    d = copy_of(ws, ws.pruned, "foreign")
    (d / "other_code.py").write_text(f"open({str(ws.root / 'other-code-ran')!r}, 'w').write('x')\n"
                                     "from modeling_selfprune import *\n")
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {k: v.replace("modeling_selfprune", "other_code") for k, v in config["auto_map"].items()}
    (d / "config.json").write_text(json.dumps(config))
    return d


def transcript_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("transcript.jsonl"))


def _kill_between_renames(ws: Workspace, cp) -> str:
    from selfprune.outputs import (  # the next write of the folder cleans up
        PRUNED_MODEL,
        check_out_dir,
    )

    out = ws.root / "replaced"
    hidden = [p.name for p in ws.root.iterdir() if p.name.startswith(".replaced.")]
    check_out_dir(out, PRUNED_MODEL, overwrite=True)
    left = [p.name for p in ws.root.iterdir() if p.name.startswith(".replaced.")]
    if left or not (out / "model.safetensors").is_file() or not (out / "config.json").is_file():
        return f"after cleanup: {left or 'no complete folder'}"
    return "" if len(hidden) == 2 else f"{len(hidden)} hidden folders after the kill, not the old and the new"


def _kill_argv(ws: Workspace) -> list[str]:
    out = copy_of(ws, ws.pruned, "replaced")
    hook = textwrap.dedent("""
        import os, signal, sys
        from selfprune import atomic
        atomic._exchange = lambda a, b: False  # the portable path: rename aside, then rename in
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if ".old-" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)
        atomic.os.replace = replace
        from selfprune.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    return ["__python__", "-c", hook, "prune", ws.dense, "--ratio", "0.5", "--metric", "magnitude", "--out", out,
            "--overwrite"]


def _mode_check(ws: Workspace, cp) -> str:
    umask = os.umask(0)
    os.umask(umask)
    out = ws.root / "perm"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in [out, *out.iterdir()]}
    wrong = {k: v for k, v in modes.items() if int(v, 8) not in (0o777 & ~umask, 0o666 & ~umask)}
    return f"private: {wrong}" if wrong else ""


def _prev_once(ws: Workspace, cp) -> str:
    n = cp.stdout.count("resuming from") + cp.stderr.count("resuming from")
    return "" if n == 1 else f"'resuming from' printed {n} times"


def _torn_search(ws: Workspace) -> list[str]:
    out = ws.root / "torn"
    shutil.rmtree(out, ignore_errors=True)
    done = run_cli(ws, ["search", ws.dense, "--ratio", "0.3", "--operator", "ga", *SEARCH, "--out", out])
    assert done.returncode == 0, done.stderr
    (out / "checkpoint.json").write_text("{torn")
    return ["search", ws.dense, "--ratio", "0.3", "--operator", "ga", *SEARCH, "--out", out, "--resume"]


def _names_field(*words: str):
    return lambda ws, cp: "" if any(w in cp.stderr for w in words) else f"message does not name {words[0]}"


def _no_at_at(ws, cp) -> str:
    return "'at at' in the message" if "at at" in cp.stderr else ""


def _not_written(name: str):
    return lambda ws, cp: f"{name} was run" if (ws.root / name).exists() else ""


def _kept_run(ws, cp) -> str:
    run = ws.root / "run-down"
    return "" if (run / "run.log").is_file() and "--resume" in cp.stderr else "the run folder or the hint is gone"


def _small_transcript(ws, cp) -> str:
    size = transcript_bytes(ws.root / "faults")
    return f"transcript {size / 2**20:.1f} MiB" if size > 2**20 else ""


def _search(ws, out, *extra) -> list[str]:
    shutil.rmtree(ws.root / out, ignore_errors=True)
    return ["search", ws.dense, "--ratio", "0.3", *SEARCH, *extra, "--out", ws.root / out]


PROBES = [
    Probe("prune --out folder with config.json and notes", "1",
          lambda ws: ["prune", ws.dense, "--ratio", "0.3", "--out",
                      folder_with(ws, "d", {"config.json": "{}", "notes.txt": "x", "sub/x": "y"})],
          watch=lambda ws: [ws.root / "d"]),
    Probe("prune MODEL --out MODEL", "1", lambda ws: ["prune", ws.dense, "--ratio", "0.3", "--out", ws.dense],
          watch=lambda ws: [ws.dense]),
    Probe("prune PRUNED --out PRUNED --overwrite", "1",
          lambda ws: ["prune", ws.pruned, "--ratio", "0.3", "--out", ws.pruned, "--overwrite"],
          watch=lambda ws: [ws.pruned]),
    Probe("prune --out under a folder that cannot be written (/proc)", "7",
          lambda ws: ["prune", ws.dense, "--ratio", "0.3", "--out", "/proc/selfprune-probe/out"]),
    Probe("search --out a model folder", "2",
          lambda ws: ["search", ws.dense, "--ratio", "0.3", "--operator", "ga", "--out", copy_of(ws, ws.dense, "m")],
          watch=lambda ws: [ws.root / "m"]),
    Probe("search --out holding checkpoint.prev.json only", "2",
          lambda ws: ["search", ws.dense, "--ratio", "0.3", "--operator", "ga", "--out",
                      folder_with(ws, "prev", {"checkpoint.prev.json": "{}"})],
          watch=lambda ws: [ws.root / "prev"]),
    Probe("SIGKILL between renaming the old folder aside and the new one in", "3", _kill_argv, expect=-9,
          check=_kill_between_renames),
    # A fault is asked again (so three in a row cost one call), a timeout is not (it has waited its whole
    # time): two hangs are two calls that fall back, and a third in a row would stop (the probe below).
    *[Probe(f"operator server: {fault}", "4", lambda ws, f=fault: _search(ws, "faults", *LLM), expect=0,
            server=[fault] * (2 if fault == "hang" else 3), check=_small_transcript)
      for fault in ("http_500", "html", "choices_string", "choices_null", "usage_strings", "big_body", "hang",
                    "huge_content")],
    Probe("operator server down for good", "4", lambda ws: _search(ws, "down", *LLM, *LONGER), server_then="http_500",
          check=_names_field("--resume")),
    Probe("run against a server that is down", "5",
          lambda ws: ["run", ws.dense, "--ratio", "0.3", *RUN, *LLM, *LONGER, "--ppl", ws.root / "wiki.txt", "--out",
                      ws.root / "run-down"], server_then="http_500", check=_kept_run),
    Probe("eval of a checkpoint whose modeling file was edited", "6",
          lambda ws: ["eval", edited_checkpoint(ws), "--ppl", ws.root / "wiki.txt", "--seqlen", "32",
                      "--max-windows", "1", "--tasks", "none"], expect=0, check=_not_written("remote-code-ran")),
    Probe("eval of a checkpoint whose auto_map names other code", "6",
          lambda ws: ["eval", foreign_auto_map(ws), "--ppl", ws.root / "wiki.txt", "--seqlen", "32",
                      "--max-windows", "1", "--tasks", "none"], check=_not_written("other-code-ran")),
    Probe("run --config a binary file", "7",
          lambda ws: ["run", ws.dense, "--ratio", "0.3", "--config", ws.root / "binary.bin", "--out", ws.root / "o1"],
          absent=lambda ws: [ws.root / "o1"]),
    Probe("prune a model whose config.json is {}", "7",
          lambda ws: ["prune", folder_with(ws, "empty-config", {"config.json": "{}"}), "--ratio", "0.3", "--out",
                      ws.root / "o2"], absent=lambda ws: [ws.root / "o2"]),
    Probe("search a model whose config.json is not JSON", "7",
          lambda ws: ["search", folder_with(ws, "bad-config", {"config.json": "{"}), "--ratio", "0.3", "--out",
                      ws.root / "o3"], absent=lambda ws: [ws.root / "o3"]),
    *[Probe(f"{cmd} --calib a binary file", "7",
            lambda ws, cmd=cmd: [cmd, ws.dense, "--ratio", "0.3", "--calib", ws.root / "binary.bin",
                                 *({"run": RUN, "search": SEARCH}.get(cmd, [])), "--out", ws.root / f"o-{cmd}"],
            absent=lambda ws, cmd=cmd: [ws.root / f"o-{cmd}"])
      for cmd in ("prune", "search", "run")],
    Probe("eval --json a folder", "7",
          lambda ws: ["eval", ws.pruned, "--ppl", ws.root / "wiki.txt", "--seqlen", "32", "--max-windows", "1",
                      "--json", ws.root]),
    Probe("--llm-timeout inf", "7", lambda ws: _search(ws, "o4", "--operator", "llm", "--llm", "openai:tiny",
                                                       "--llm-timeout", "inf"), check=_names_field("llm-timeout")),
    Probe("--recover-lr inf", "7", lambda ws: ["run", ws.dense, "--ratio", "0.3", "--recover", "--recover-lr", "inf",
                                               "--out", ws.root / "o5"], check=_names_field("recover-lr", "recover.lr")),
    Probe("export --gguf an existing text file", "8",
          lambda ws: ["export", ws.pruned, "--gguf", folder_with(ws, "n", {"notes.txt": "x"}) / "notes.txt"],
          watch=lambda ws: [ws.root / "n"]),
    Probe("prune output permissions", "9",
          lambda ws: (shutil.rmtree(ws.root / "perm", ignore_errors=True),
                      ["prune", ws.dense, "--ratio", "0.3", "--metric", "magnitude", "--out", ws.root / "perm"])[1],
          expect=0, check=_mode_check),
    Probe("resume from a torn checkpoint says so once", "9", _torn_search, expect=0, check=_prev_once),
    Probe("report of a folder whose results.json is not JSON", "9",
          lambda ws: ["report", folder_with(ws, "bad-report", {"results.json": "{"})], check=_no_at_at),
    Probe("search --resume with another --ratio", "9",
          lambda ws: (_torn_search(ws), ["search", ws.dense, "--ratio", "0.4", "--operator", "ga", *SEARCH, "--out",
                                         ws.root / "torn", "--resume"])[1], check=_names_field("ratio")),
    Probe("prune --rates with NaN", "9",
          lambda ws: ["prune", ws.dense, "--rates", folder_with(ws, "r1", {"r.json": "[0.3, NaN, 0.3, 0.3]"}) / "r.json",
                      "--out", ws.root / "o6"], absent=lambda ws: [ws.root / "o6"]),
    Probe("prune --rates for the wrong number of layers", "9",
          lambda ws: ["prune", ws.dense, "--rates", folder_with(ws, "r2", {"r.json": "[0.3, 0.3]"}) / "r.json",
                      "--out", ws.root / "o7"], absent=lambda ws: [ws.root / "o7"]),
]


def run_probe(ws: Workspace, probe: Probe) -> dict:
    server = None
    if probe.server is not None or probe.server_then != "ok":
        server = FaultServer(probe.server or [], then=probe.server_then, hang=2.0)
        ws.url = server.url
    try:
        argv = probe.argv(ws)
        if server is not None and argv[0] in ("search", "run"):
            argv = [*argv, "--llm-base-url", server.url]
        before = snapshot(probe.watch(ws))
        t0 = time.perf_counter()
        if argv[0] == "__python__":
            cp = subprocess.run([ws.python, *map(str, argv[1:])], capture_output=True, text=True, cwd=ws.root)
        else:
            cp = run_cli(ws, argv)
        seconds = time.perf_counter() - t0
    finally:
        if server is not None:
            server.close()
    after = snapshot(probe.watch(ws))
    lost = sorted(set(before) - set(after)) + sorted(k for k in before if k in after and before[k] != after[k])
    stray = [str(p) for p in probe.absent(ws) if p.exists()]
    problems = []
    if lost:
        problems.append(f"lost or changed: {', '.join(Path(p).name for p in lost)}")
    if stray:
        problems.append(f"half written: {', '.join(Path(p).name for p in stray)}")
    if probe.check is not None:
        problems.append(probe.check(ws, cp))
    err_lines = [line for line in cp.stderr.splitlines() if line.startswith("selfprune: error:")]
    return {"probe": probe.name, "item": probe.item, "exit": cp.returncode, "expected": probe.expect,
            "traceback": "Traceback" in cp.stderr, "problems": "; ".join(p for p in problems if p),
            "message": err_lines[-1][len("selfprune: error: "):].replace(str(ws.root), "WORK")[:200] if err_lines else "",
            "seconds": round(seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated substrings of probe names")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    probes = [p for p in PROBES if not args.only or any(s in p.name for s in args.only.split(","))]
    with tempfile.TemporaryDirectory(prefix="selfprune-probe-") as tmp:
        ws = Workspace(Path(tmp), sys.executable)
        prepare(ws)
        rows = []
        for probe in probes:
            row = run_probe(ws, probe)
            rows.append(row)
            ok = row["exit"] == row["expected"] and not row["traceback"] and not row["problems"]
            print(f"{'ok  ' if ok else 'FAIL'} [{row['item']}] {row['probe']}: exit {row['exit']} "
                  f"(expected {row['expected']}), traceback {'yes' if row['traceback'] else 'no'}"
                  f"{', ' + row['problems'] if row['problems'] else ''}  {row['seconds']} s"
                  f"{chr(10) + '       ' + row['message'] if row['message'] else ''}", flush=True)
    failed = [r for r in rows if r["exit"] != r["expected"] or r["traceback"] or r["problems"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} probes as expected")
    if args.json:
        from selfprune.versions import versions

        manifest = {"command": "python benchmarks/probe_faults.py" + (f" --only {args.only}" if args.only else ""),
                    "date": time.strftime("%Y-%m-%d"), "versions": versions(), "machine": platform.machine(),
                    "cpus": os.cpu_count()}
        Path(args.json).write_text(json.dumps({"manifest": manifest, "rows": rows}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
