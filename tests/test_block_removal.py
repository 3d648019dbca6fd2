"""Block influence from the calibration pass and the block-removal prior of the seeded start."""

import numpy as np
import pytest
import torch
from conftest import FAMILIES

from selfprune.evolution.genome import GenomeSpace
from selfprune.evolution.operators.seeds import prior_shapes, removal_vector
from selfprune.models.adapter import get_adapter
from selfprune.pruning.importance import compute_importance


@pytest.mark.parametrize("family", FAMILIES)
def test_a_silenced_block_has_no_influence(tiny_model, family):
    adapter = get_adapter(tiny_model(family))
    with torch.no_grad():  # its output is zero: the residual stream passes it unturned
        adapter.projection(adapter.attention(1), "o").weight.zero_()
        adapter.projection(adapter.mlp(2), "down").weight.zero_()
    blocks = torch.randint(0, 128, (3, 24), generator=torch.Generator().manual_seed(0))
    scores = compute_importance(adapter, blocks, "wanda-sp", batch_size=2, progress=False)
    attn, mlp = scores.attn_influence, scores.mlp_influence
    assert attn.shape == mlp.shape == (adapter.num_layers,)
    assert attn[1] == pytest.approx(0.0, abs=1e-6) and mlp[2] == pytest.approx(0.0, abs=1e-6)
    assert attn[[0, 2]].min() > 1e-4 and mlp[[0, 1]].min() > 1e-4


def test_influence_is_one_minus_the_cosine_of_the_stream_around_the_block(tiny_model):
    adapter = get_adapter(tiny_model("llama"))
    blocks = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    scores = compute_importance(adapter, blocks, "wanda-sp", progress=False)
    seen = {}
    adapter.mlp(0).register_forward_hook(lambda m, a, out: seen.update(mlp=out))
    adapter.attention(0).register_forward_hook(lambda m, a, out: seen.update(attn=out[0]))
    with torch.no_grad():
        hidden = adapter.model(blocks, output_hidden_states=True).hidden_states
    before, after = hidden[0], hidden[1]  # the stream into and out of layer 0
    mid = before + seen["attn"]
    torch.testing.assert_close(mid + seen["mlp"], after)
    cos = torch.nn.functional.cosine_similarity
    assert float(scores.attn_influence[0]) == pytest.approx(float((1 - cos(before, mid, dim=-1)).mean()), rel=1e-4)
    assert float(scores.mlp_influence[0]) == pytest.approx(float((1 - cos(mid, after, dim=-1)).mean()), rel=1e-4)


def space(target=0.3, hi=1.0, joint=False, layers=6):
    return GenomeSpace(layers, target, attn_params=[1.0] * layers, mlp_params=[3.0] * layers,
                       attn_levels=np.linspace(0, 1, 4), mlp_levels=np.linspace(0, 1, 49), bounds=(0.0, hi),
                       joint=joint)


PROFILES = {"attn_influence": np.array([0.01, 0.5, 0.02, 0.6, 0.7, 0.03]),
            "mlp_influence": np.array([0.9, 0.8, 0.06, 0.85, 0.95, 0.99])}


def test_removal_prior_removes_the_blocks_of_least_influence_per_parameter():
    sp = space()
    assert [n for n, _ in prior_shapes(sp, PROFILES)][-1] == "removal"
    genome, _ = sp.repair(removal_vector(sp, PROFILES))
    attn, mlp = genome.arrays()
    # Budget 0.3 x 24 = 7.2: three attention blocks (1 each) and the cheapest MLP per parameter (3).
    assert list(np.flatnonzero(attn == 1.0)) == [0, 2, 5] and list(np.flatnonzero(mlp == 1.0)) == [2]
    assert sp.achieved(genome) == pytest.approx(0.3, abs=0.01)  # the rest spread by repair
    assert attn[[1, 3, 4]].max() < 0.5 and mlp[[0, 1, 3, 4, 5]].max() < 0.5


def test_removal_prior_whole_layers_when_joint_and_the_bound_when_it_is_below_one():
    genome, _ = space(joint=True).repair(removal_vector(space(joint=True), PROFILES))
    assert list(np.flatnonzero(np.asarray(genome.attn) == 1.0)) == [2]  # layer 2: least influence in all
    capped = removal_vector(space(hi=0.9), PROFILES)
    assert capped.max() == 0.9 and capped.min() == 0.0
    assert removal_vector(space(), {"attn_importance": np.ones(6), "mlp_importance": np.ones(6)}) is None
