"""GGUF export, checked against the real llama.cpp runtime (llama-cpp-python), not our own reader.

The default model, pruned at 30% with bias compensation and with one attention and one MLP block
removed, must compute in llama.cpp what it computes in PyTorch on held-out WikiText-2 text; tiny
random models of every exported family must give the same logits; what cannot be expressed must be
refused with one error line, exit code 2 and no file.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import tiny_config

from selfprune.errors import SelfpruneError
from selfprune.export.gguf import export_gguf

N_TOKENS = 512
THREADS = min(2, os.cpu_count() or 1)


@pytest.fixture(scope="module")
def llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[gguf]'); GGUF files cannot be run")
    return llama_cpp


def llama_logits(llama_cpp, path, ids, f32_cache=False, ubatch=None):
    """llama.cpp's logits at every position of ``ids``."""
    n = len(ids)
    kwargs = dict(n_ctx=n, n_batch=n, n_ubatch=ubatch or n, n_threads=THREADS, logits_all=True, verbose=False)
    if f32_cache:  # isolate the export from llama.cpp's default f16 KV cache
        kwargs.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm = llama_cpp.Llama(str(path), **kwargs)
    try:
        llm.eval(ids)
        return np.array(llm.scores[:n], dtype=np.float32)
    finally:
        llm.close()


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    logp = torch.log_softmax(torch.tensor(logits[:-1], dtype=torch.float64), dim=-1)
    return float(torch.exp(-logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean()))


# --- the default model, pruned at 30% ----------------------------------------------------------

REMOVED_ATTN, REMOVED_MLP = 20, 25


@pytest.fixture(scope="module")
def pruned_default(tmp_path_factory, default_model_dir):
    from selfprune import prune

    # ~30% of attention+MLP overall: one attention and one MLP block removed, the rest at 27.6%.
    rates = [{"attn": 0.276, "mlp": 0.276} for _ in range(30)]
    rates[REMOVED_ATTN]["attn"] = 1.0
    rates[REMOVED_MLP]["mlp"] = 1.0
    result = prune(default_model_dir, rates=rates, calib_samples=8, calib_seqlen=128)
    out = tmp_path_factory.mktemp("gguf") / "pruned30"
    result.save(out)
    record = json.loads((out / "config.json").read_text())["selfprune"]
    layers = record["layers"]
    assert record["bias_compensation"] and layers[REMOVED_ATTN]["num_heads"] == 0 and layers[REMOVED_MLP]["intermediate_size"] == 0
    assert layers[REMOVED_ATTN]["o_bias"] and layers[REMOVED_MLP]["down_bias"]  # non-zero constants to carry
    return out


@pytest.fixture(scope="module")
def heldout(pruned_default, wikitext_test_path):
    """512 WikiText-2 test tokens and the pruned PyTorch model's logits on them."""
    from selfprune.api import load_pruned

    model, tokenizer = load_pruned(str(pruned_default))
    text = wikitext_test_path.read_text(encoding="utf-8")[:20000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:N_TOKENS]
    assert len(ids) == N_TOKENS
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    return {"text": text, "ids": ids, "logits": logits, "model": model, "tokenizer": tokenizer}


@pytest.fixture(scope="module")
def gguf_f32(pruned_default, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "pruned30-f32.gguf"
    return path, export_gguf(pruned_default, path, outtype="f32")


def test_f32_export_computes_the_pruned_model(llama_cpp, gguf_f32, heldout, pruned_default):
    path, summary = gguf_f32
    config = json.loads((pruned_default / "config.json").read_text())["selfprune"]["layers"]
    assert summary["arch"] == "deci" and summary["bytes"] == path.stat().st_size
    for spec, layer in zip(config, summary["layers"]):  # pruned sizes are written as they are
        if spec["num_heads"]:
            assert (layer["heads"], layer["kv_heads"]) == (spec["num_heads"], spec["num_kv_heads"])
        if spec["intermediate_size"]:
            assert layer["ffn"] == spec["intermediate_size"]
    # removed blocks with a bias-compensation constant: one zero head / channel carrying it
    assert summary["layers"][REMOVED_ATTN]["attn"] == "const" and summary["layers"][REMOVED_MLP]["mlp"] == "const"

    llm_tok = llama_cpp.Llama(str(path), n_ctx=64, vocab_only=True, verbose=False)
    try:
        ids_cpp = llm_tok.tokenize(heldout["text"].encode("utf-8"), add_bos=False, special=False)
    finally:
        llm_tok.close()
    assert ids_cpp[:N_TOKENS] == heldout["ids"]  # llama.cpp tokenizes the text as transformers does

    got = llama_logits(llama_cpp, path, heldout["ids"], f32_cache=True)
    ref = heldout["logits"]
    agreement = float((got.argmax(-1) == ref.argmax(-1)).mean())
    ppl_cpp, ppl_torch = perplexity(got, heldout["ids"]), perplexity(ref, heldout["ids"])
    print(f"f32: argmax agreement {agreement:.4f}, ppl {ppl_cpp:.4f} vs {ppl_torch:.4f}, max |dlogit| {np.abs(got - ref).max():.2e}")
    assert agreement >= 0.97
    assert abs(ppl_cpp / ppl_torch - 1) <= 0.01


def test_f16_export_within_two_percent(llama_cpp, pruned_default, heldout, tmp_path):
    path = tmp_path / "pruned30-f16.gguf"
    summary = export_gguf(pruned_default, path, outtype="f16")
    got = llama_logits(llama_cpp, path, heldout["ids"])  # llama.cpp defaults: f16 weights and KV cache
    ref = heldout["logits"]
    agreement = float((got.argmax(-1) == ref.argmax(-1)).mean())
    ppl_cpp, ppl_torch = perplexity(got, heldout["ids"]), perplexity(ref, heldout["ids"])
    print(f"f16: argmax agreement {agreement:.4f}, ppl {ppl_cpp:.4f} vs {ppl_torch:.4f}, {summary['bytes']} bytes")
    assert abs(ppl_cpp / ppl_torch - 1) <= 0.02
    assert agreement >= 0.97


def test_chat_template_special_tokens_and_generation(llama_cpp, gguf_f32, heldout):
    """llama.cpp decodes token by token through its KV cache: greedy output must equal transformers'."""
    path, _ = gguf_f32
    model, tokenizer = heldout["model"], heldout["tokenizer"]
    llm = llama_cpp.Llama(str(path), n_ctx=128, n_threads=THREADS, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
        assert (llm.token_bos(), llm.token_eos()) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == prompt_ids
        cpp = []
        for token in llm.generate(prompt_ids, temp=0.0, top_k=1):
            if token == llm.token_eos() or len(cpp) == 24:
                break
            cpp.append(token)
    finally:
        llm.close()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    hf = [t for t in out[0, len(prompt_ids):].tolist() if t != tokenizer.eos_token_id]
    assert cpp == hf, (tokenizer.decode(cpp), tokenizer.decode(hf))


# --- tiny random models of every exported family -----------------------------------------------


@pytest.fixture(scope="module")
def smollm_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def tiny_checkpoint(family, tokenizer, out, attn=None, mlp=None, compensation=False, **config):
    """A tiny random model with the default model's tokenizer (vocabulary sized to match), pruned
    by per-layer rates and saved as a checkpoint; without rates, saved dense."""
    from transformers import AutoModelForCausalLM

    from selfprune.models import get_adapter
    from selfprune.pruning.apply import apply_plan
    from selfprune.pruning.checkpoint import save_pruned
    from selfprune.pruning.importance import compute_importance
    from selfprune.pruning.plan import make_plan

    torch.manual_seed(0)
    cfg = tiny_config(family)
    cfg.vocab_size = len(tokenizer)
    for key, value in config.items():
        setattr(cfg, key, value)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)  # make biases and norms matter
    if attn is None:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return model
    adapter = get_adapter(model)
    scores = compute_importance(adapter, torch.randint(0, cfg.vocab_size, (2, 16)), "flap", progress=False)
    apply_plan(adapter, make_plan(adapter, scores.head_scores, scores.channel_scores, attn, mlp), scores,
               bias_compensation=compensation)
    save_pruned(model, tokenizer, out)
    return model


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}

# family, attention rates, MLP rates, bias compensation, config overrides, expected llama.cpp arch
CASES = {
    # layer 0 attention removed (it must keep one head), a constant MLP on the last layer
    "llama-compensated": ("llama", [1.0, 0.5, 0.3], [0.3, 1.0, 0.5], True, {}, "deci"),
    # a whole layer removed (n_head = n_ff = 0), zero constants
    "llama-removed-layer": ("llama", [1.0, 1.0, 0.5], [0.3, 1.0, 1.0], False, {}, "deci"),
    "llama-all-biases": ("llama", [0.5, 1.0, 0.0], [1.0, 0.5, 0.5], True, {"attention_bias": True, "mlp_bias": True}, "deci"),
    "llama-llama3-rope": ("llama", [0.5, 0.0, 0.5], [0.5, 0.5, 0.0], True, {"rope_parameters": LLAMA3_ROPE}, "deci"),
    "mistral-compensated": ("mistral", [0.5, 1.0, 0.3], [1.0, 0.5, 0.5], True, {}, "deci"),
    "qwen2-compensated": ("qwen2", [0.5, 1.0, 0.3], [1.0, 0.5, 0.5], True, {}, "deci"),
    "qwen3-removed-blocks": ("qwen3", [0.5, 1.0, 0.3], [1.0, 0.5, 0.5], False, {"tie_word_embeddings": True}, "openelm"),
    "qwen3-dense": ("qwen3", None, None, False, {"tie_word_embeddings": True}, "openelm"),
    "gemma3-uniform": ("gemma3", [0.5] * 3, [0.5] * 3, False, {}, "gemma3"),
    "gemma3-dense": ("gemma3", None, None, False, {}, "gemma3"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_families_match_in_llama_cpp(llama_cpp, smollm_tokenizer, tmp_path, case):
    family, attn, mlp, compensation, config, arch = CASES[case]
    model = tiny_checkpoint(family, smollm_tokenizer, tmp_path / "ckpt", attn, mlp, compensation, **config)
    summary = export_gguf(tmp_path / "ckpt", tmp_path / "model.gguf", outtype="f32")
    assert summary["arch"] == arch
    # 96 tokens (beyond Gemma's 32-token window and the llama3 rope's 32-token original context),
    # evaluated in micro-batches of 32 so that later tokens attend through llama.cpp's KV cache.
    ids = torch.randint(0, len(smollm_tokenizer), (96,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = llama_logits(llama_cpp, tmp_path / "model.gguf", ids, f32_cache=True, ubatch=32)
    # ggml's GELU uses an f16 lookup table: Gemma differs by ~1e-4, the SiLU families by ~1e-6.
    assert np.abs(got - ref).max() <= 2e-3 * max(1.0, float(np.abs(ref).max())), case
    assert (got.argmax(-1) == ref.argmax(-1)).all()


# --- what is refused ---------------------------------------------------------------------------


def _assert_refused(tmp_path, ckpt, pattern):
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir(parents=True)
    with pytest.raises(SelfpruneError, match=pattern):
        export_gguf(ckpt, out)
    assert list(out.parent.iterdir()) == []  # no file, no temporary left behind


def test_refuses_what_llama_cpp_cannot_express(smollm_tokenizer, tmp_path):
    # Qwen3's per-layer graph (openelm) has no output biases: bias compensation cannot be carried.
    tiny_checkpoint("qwen3", smollm_tokenizer, tmp_path / "q3", [0.5, 0.3, 0.3], [0.5, 0.3, 0.3], True,
                    tie_word_embeddings=True)
    _assert_refused(tmp_path / "a", tmp_path / "q3", "output bias.*--no-bias-compensation")
    # ... nor a separate output matrix.
    tiny_checkpoint("qwen3", smollm_tokenizer, tmp_path / "q3u", [0.5, 0.3, 0.3], [0.5, 0.3, 0.3], False,
                    tie_word_embeddings=False)
    _assert_refused(tmp_path / "b", tmp_path / "q3u", "separate output matrix")
    # Gemma 3's graph has one size for all layers.
    tiny_checkpoint("gemma3", smollm_tokenizer, tmp_path / "g3", [0.5, 0.0, 0.5], [0.5, 0.5, 0.0], False)
    _assert_refused(tmp_path / "c", tmp_path / "g3", "different sizes per layer")


@pytest.mark.parametrize("edit, pattern", [
    (lambda t: t["model"].update(byte_fallback=True), "byte fallback"),  # SentencePiece style
    (lambda t: t.update(pre_tokenizer={"type": "Whitespace"}), "pre-tokenizer .* not one llama.cpp implements"),
    (lambda t: t.update(normalizer={"type": "Lowercase"}), "normalizer \\(Lowercase\\)"),
])
def test_refuses_tokenizers_llama_cpp_would_split_differently(smollm_tokenizer, tmp_path, edit, pattern):
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("llama", smollm_tokenizer, ckpt, [0.5] * 3, [0.5] * 3, True)
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    edit(spec)
    (ckpt / "tokenizer.json").write_text(json.dumps(spec))
    _assert_refused(tmp_path, ckpt, pattern)


def test_failure_mid_write_leaves_no_file(smollm_tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("llama", smollm_tokenizer, ckpt, [0.5] * 3, [0.5] * 3, True)
    weights = load_file(ckpt / "model.safetensors")
    del weights["model.layers.2.mlp.down_proj.weight"]  # found missing only while tensors are written
    save_file(weights, ckpt / "model.safetensors")
    _assert_refused(tmp_path, ckpt, "lacks the tensor model.layers.2.mlp.down_proj.weight")


def _cli(capsys, *argv):
    from selfprune.cli import main

    capsys.readouterr()  # what set-up wrote (e.g. a checkpoint's progress bar) is not the command's
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports_and_reports(smollm_tokenizer, tmp_path, capsys):
    tiny_checkpoint("qwen2", smollm_tokenizer, tmp_path / "ckpt", [0.5, 1.0, 0.3], [1.0, 0.5, 0.5], True)
    code, out, err = _cli(capsys, "export", str(tmp_path / "ckpt"), "--gguf", str(tmp_path / "m.gguf"), "--outtype", "q8_0")
    assert code == 0 and err == ""
    assert "llama.cpp arch 'deci'" in out and "q8_0" in out and "zero-weight head/channel" in out
    assert (tmp_path / "m.gguf").stat().st_size > 0


@pytest.mark.parametrize("args, pattern", [
    (["{tmp}"], "not a model directory"),
    (["{tmp}/missing"], "does not exist"),
    (["{ckpt}", "--outtype", "q4_k"], "unknown outtype 'q4_k'"),
    (["{ckpt}", "--gguf-dir"], "is a directory"),
    (["{ckpt}", "--gguf", "{tmp}/no/such/folder/m.gguf"], "does not exist"),
    (["{gpt2}"], "model type 'gpt2' is not exported"),
])
def test_cli_bad_input_is_one_line_and_exit_2(smollm_tokenizer, tmp_path, capsys, args, pattern):
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("llama", smollm_tokenizer, ckpt, [0.5] * 3, [0.5] * 3, True)
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "adir").mkdir()
    argv = [a.format(tmp=tmp_path, ckpt=ckpt, gpt2=gpt2) for a in args]
    if "--gguf-dir" in argv:
        argv[argv.index("--gguf-dir"):] = ["--gguf", str(tmp_path / "adir")]
    if "--gguf" not in argv:
        argv += ["--gguf", str(tmp_path / "m.gguf")]
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()  # what writing the setup's checkpoint printed is not the command's output
    code, out, err = _cli(capsys, "export", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("selfprune: error: ") and pattern in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
