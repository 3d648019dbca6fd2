"""The published methods beside selfprune (benchmarks/peers.py, bench_peers.py): what each decides, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def peers(load_benchmark):
    return load_benchmark("peers")


def blocks(n=4, seqlen=16, vocab=128, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def silence(adapter, idx):
    """Make layer ``idx`` an identity: its attention and MLP write nothing to the residual stream."""
    with torch.no_grad():
        for block, role in ((adapter.attention(idx), "o"), (adapter.mlp(idx), "down")):
            lin = adapter.projection(block, role)
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_flap_keeps_the_globally_best_standardized_units_up_to_the_budget(peers, tiny_model, family, ratio):
    from selfprune.models import get_adapter

    adapter = get_adapter(tiny_model(family))
    attn, mlp, scores = peers.flap_allocation(adapter, blocks(), ratio)
    geo = adapter.geometry()
    g, width = adapter.heads_per_group, adapter.intermediate_size
    group_cost = geo.attn_params(1, g) - geo.attn_params(0, 0)
    total = adapter.num_layers * (adapter.num_kv_heads * group_cost + width * 3 * adapter.hidden_size)
    removed = sum(a * adapter.num_kv_heads * group_cost + m * width * 3 * adapter.hidden_size for a, m in zip(attn, mlp))
    assert abs(removed / total - ratio) <= group_cost / total  # within one unit of the budget
    kept, dropped = [], []
    for i in range(adapter.num_layers):
        channels = scores.channel_scores[i]
        assert abs(float(channels.mean())) < 1e-4 and abs(float(channels.std()) - 1) < 1e-4  # standardized per layer
        order = channels.argsort(descending=True)
        n_keep = round((1 - mlp[i]) * width)
        kept += channels[order[:n_keep]].tolist()
        dropped += channels[order[n_keep:]].tolist()
        groups = scores.head_scores[i][::g]
        order = groups.argsort(descending=True)
        n_keep = round((1 - attn[i]) * adapter.num_kv_heads)
        kept += groups[order[:n_keep]].tolist()
        dropped += groups[order[n_keep:]].tolist()
    assert min(kept) >= max(dropped)  # one global threshold over groups and channels


def test_uniform_rates_remove_the_ratio_in_every_layer(peers, tiny_model):
    from selfprune.models import get_adapter
    from selfprune.pruning.plan import attention_levels

    adapter = get_adapter(tiny_model("llama"))
    attn, mlp = peers.uniform_rates(adapter, 0.3)
    geo = adapter.geometry()
    a_dense, m_dense = geo.attn_params(adapter.num_kv_heads, adapter.num_heads), geo.mlp_params(adapter.intermediate_size)
    assert len(set(attn)) == len(set(mlp)) == 1 and attn[0] in attention_levels(adapter)
    assert (attn[0] * a_dense + mlp[0] * m_dense) / (a_dense + m_dense) == pytest.approx(0.3)


def test_shortgpt_removes_the_layer_that_changes_nothing(peers, tiny_model):
    from selfprune.models import get_adapter

    adapter = get_adapter(tiny_model("llama"))
    silence(adapter, 1)
    removed, influence = peers.shortgpt_layers(adapter, blocks(), ratio=0.34)  # one of three layers
    assert removed == [1]
    assert influence[1] == pytest.approx(0.0, abs=1e-5) and min(influence[0], influence[2]) > 1e-3


def test_sleb_removes_greedily_by_calibration_perplexity_and_puts_the_layers_back(peers, tiny_model):
    from selfprune.eval.perplexity import perplexity
    from selfprune.models import get_adapter

    model = tiny_model("llama")
    adapter = get_adapter(model)
    data = blocks()
    before = model(data).logits
    single = []
    for j in range(adapter.num_layers):  # each layer removed alone, by hand
        original = adapter.layers[j]
        adapter.layers[j] = peers._Skipped(original)
        single.append(perplexity(model, None, data.reshape(-1), seqlen=data.shape[1]).ppl)
        adapter.layers[j] = original
    removed, trace = peers.sleb_layers(adapter, data, ratio=0.67)  # two of three layers
    first = min(range(len(single)), key=single.__getitem__)
    assert first in removed and trace[0] == pytest.approx(single[first])
    assert len(removed) == 2 and trace[1] >= 0
    assert torch.equal(model(data).logits, before)  # every layer is back
    again, more = peers.sleb_layers(adapter, data, ratio=0.67, already=tuple(removed[:1]))  # on from the first step
    assert again == removed and more == pytest.approx(trace[1:])


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir):
    """Four layers and a 2048-token context (the papers' longer window)."""
    return tiny_model_dir(hidden_size=32, intermediate_size=48, num_hidden_layers=4, head_dim=8,
                          max_position_embeddings=2048)


def test_bench_peers_runs_each_cell_once_and_merges_them_into_one_record(load_benchmark, tiny_dir, wikitext_test_path,
                                                                        tmp_path):
    bench = load_benchmark("bench_peers")
    out = tmp_path / "peers"
    text = tmp_path / "wiki.txt"  # the head of the test set: enough tokens, and quick to tokenize seven times
    text.write_text(wikitext_test_path.read_text()[:60_000])
    argv = ["--model", tiny_dir, "--methods", "dense,flap,shortgpt,sleb", "--ratios", "0.5", "--seeds", "0,1",
            "--calib-samples", "2", "--calib-seqlen", "32", "--sleb-samples", "1", "--ppl", str(text),
            "--ppl-tokens", "2048", "--tasks", "none", "--weights-from", "tiny-models 1.0", "--out", str(out)]
    assert bench.main(argv) == 0
    cells = sorted(p.relative_to(out / "cells").as_posix() for p in (out / "cells").rglob("*.json"))
    assert len(cells) == 1 + 3 * 2 and "dense.json" in cells
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")}
    assert bench.main(argv) == 0  # every cell is there: nothing runs again
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*.json")} == stamps
    assert bench.main(["--finalize", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert not list((out / "cells").rglob("*.json"))  # the record holds them now
    rows = {(r["method"], r["seed"]): r for r in record["rows"]}
    assert len(rows) == 7
    for (method, seed), row in rows.items():
        assert set(row["perplexity"]) == {"2048", "128"}
        assert row["perplexity"]["2048"]["windows"] == 1 and row["perplexity"]["128"]["windows"] == 16
        assert row["weights"]["package"] == "tiny-models 1.0"
        if method in ("shortgpt", "sleb"):
            assert row["achieved_ratio"] == pytest.approx(0.5) and len(row["decided"]["removed_layers"]) == 2
    summary = {(s["ratio"], s["method"]): s for s in record["summary"]}
    flap = summary[(0.5, "flap")]
    values = [rows[("flap", s)]["perplexity"]["128"]["ppl"] for s in (0, 1)]
    assert flap["seeds"] == [0, 1] and flap["ppl"]["128"]["mean"] == pytest.approx(sum(values) / 2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["invocations"]) == 1 and "bench_peers.py" in manifest["invocations"][0]["command"]

    assert bench.main(argv) == 0  # rows in the record count as done
    assert not list((out / "cells").rglob("*.json"))

    further = argv[:argv.index("--methods")] + ["--methods", "sleb", "--ratios", "0.75", "--seeds", "0"]
    further += argv[argv.index("--calib-samples"):]
    assert bench.main(further) == 0  # SLEB at 3 of 4 layers goes on from its 2 of 4 with the same blocks
    (cell,) = (out / "cells").rglob("*.json")
    deeper, earlier = json.loads(cell.read_text()), rows[("sleb", 0)]
    assert deeper["decided"]["removed_layers"][:2] == earlier["decided"]["removed_layers"]
    assert len(deeper["decided"]["removed_layers"]) == 3 and deeper["achieved_ratio"] == pytest.approx(0.75)
    assert deeper["decided"]["continued_from"] == {"ratio": 0.5, "seconds": earlier["seconds"]}
    assert deeper["seconds"] > earlier["seconds"]


def test_selfprune_is_compared_with_every_method_seed_by_seed(load_benchmark):
    bench = load_benchmark("bench_peers")

    def row(method, seed, ppl2048, ppl128=50.0, average=None):
        return {"method": method, "ratio": 0.5, "seed": seed,
                "perplexity": {"2048": {"ppl": ppl2048}, "128": {"ppl": ppl128}},
                **({"zeroshot": {"average": average}} if average is not None else {})}

    rows = [row("selfprune-quick", s, p, average=a) for s, (p, a) in enumerate([(100.0, 0.40), (200.0, 0.38),
                                                                                 (400.0, 0.36)])]
    rows += [row("sleb", s, p, average=a) for s, (p, a) in enumerate([(110.0, 0.41), (180.0, 0.41), (800.0, 0.35)])]
    rows += [row("shortgpt", s, 300.0) for s in range(3)]  # not scored on the tasks
    rows += [row("flap", 0, 90.0, average=0.30), {"method": "llm-pruner", "ratio": 0.5, "seed": 0, "error": "cannot trace"},
             {"method": "dense", "ratio": None, "seed": None, "perplexity": {"2048": {"ppl": 20.0}}}]
    comparisons = {(c["against"], c.get("seqlen", c["measure"])): c for c in bench.paired_against(rows)}
    # flap: one seed; llm-pruner failed; dense unpaired; shortgpt has no task scores to pair
    assert set(comparisons) == {("sleb", "2048"), ("sleb", "128"), ("sleb", "7-task average"),
                                ("shortgpt", "2048"), ("shortgpt", "128")}
    on_tasks = comparisons[("sleb", "7-task average")]
    assert on_tasks["n"] == 3 and on_tasks["wins"] == 1 and on_tasks["sign_p"] == pytest.approx(7 / 8)
    assert on_tasks["difference"] == pytest.approx((-0.01 - 0.03 + 0.01) / 3)
    assert on_tasks["difference_ci95"][0] <= on_tasks["difference"] <= on_tasks["difference_ci95"][1]
    vs_sleb = comparisons[("sleb", "2048")]
    assert vs_sleb["prune_ratio"] == 0.5 and vs_sleb["n"] == 3 and vs_sleb["wins"] == 2 and vs_sleb["sign_p"] == pytest.approx(0.5)
    assert vs_sleb["ratio"] == pytest.approx((100 / 110 * 200 / 180 * 400 / 800) ** (1 / 3))
    assert comparisons[("sleb", "128")]["wins"] == 0  # ties are not wins
