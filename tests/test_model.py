"""sophon.model: the published configuration, weaver-core's layout and numerics, checkpoints.

The oracle is weaver-core from PyPI (test extra ``oracle``): built with the Sophon configuration and
loaded with the same seeded random weights, it must give the same outputs on the 100 reference jets.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sophon.features import build_inputs
from sophon.oracle import weaver_reference
from sophon.model import (SOPHON_PARAMETER_COUNT, Block, SophonModel, _explicit_attention,
                          config_from_state_dict, count_parameters, load_checkpoint,
                          pairwise_features, randomize_weights_, save_checkpoint, sophon_config)
from sophon.training import TRAINING_CONFIGS

ORACLE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference_inputs(reference_table) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                np.ndarray]:
    inputs = build_inputs(reference_table)
    return (torch.from_numpy(inputs.pf_features), torch.from_numpy(inputs.pf_vectors),
            torch.from_numpy(inputs.pf_mask), inputs.multiplicity)


@pytest.fixture(scope="module")
def model() -> SophonModel:
    return randomize_weights_(SophonModel(), seed=11).eval()


@pytest.fixture(scope="module")
def model_outputs(model, reference_inputs):
    features, vectors, mask, _ = reference_inputs
    with torch.no_grad():
        return model(features, vectors, mask)


def weaver_model(config=None):
    """The weaver-core oracle (skips when weaver-core is not installed)."""
    reference = weaver_reference(config=config)
    if reference is None:
        pytest.skip("weaver-core (extra 'oracle') is not installed")
    return reference


# --- configuration and layout -------------------------------------------------------------------


def test_published_configuration_has_2304688_parameters():
    model = SophonModel()
    assert count_parameters(model) == SOPHON_PARAMETER_COUNT == 2_304_688
    config = model.config
    assert (config.num_layers, config.num_cls_layers, config.num_heads) == (8, 2, 8)
    assert config.embed_dims == (128, 512, 128) and config.pair_embed_dims == (64, 64, 64)
    assert config.fc_params == ((512, 0.1),) and config.num_classes == 188


def expected_weaver_keys(num_layers=8, num_cls_layers=2, embed_layers=3, pair_layers=4, fc_hidden=1):
    """weaver-core's state-dict layout, written out from its module structure."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"mod.cls_token", "mod.norm.weight", "mod.norm.bias"}
    keys |= {f"mod.embed.input_bn.{k}" for k in bn}
    for i in range(embed_layers):  # (LayerNorm, Linear, GELU) per width
        keys |= {f"mod.embed.embed.{3 * i + j}.{k}" for j in (0, 1) for k in ("weight", "bias")}
    keys |= {f"mod.pair_embed.embed.0.{k}" for k in bn}
    for i in range(pair_layers):  # (Conv1d, BatchNorm1d, GELU) per width
        keys |= {f"mod.pair_embed.embed.{3 * i + 1}.{k}" for k in ("weight", "bias")}
        keys |= {f"mod.pair_embed.embed.{3 * i + 2}.{k}" for k in bn}
    block = ["c_attn", "w_resid"] + [f"{m}.{k}" for m in (
        "pre_attn_norm", "attn.in_proj", "attn.out_proj", "post_attn_norm", "pre_fc_norm", "fc1",
        "post_fc_norm", "fc2") for k in ("weight", "bias")]
    for name, count in (("blocks", num_layers), ("cls_blocks", num_cls_layers)):
        keys |= {f"mod.{name}.{i}.{k}" for i in range(count) for k in block}
    keys |= {f"mod.fc.{i}.0.{k}" for i in range(fc_hidden) for k in ("weight", "bias")}
    keys |= {f"mod.fc.{fc_hidden}.{k}" for k in ("weight", "bias")}
    return keys


def test_state_dict_keys_are_the_published_layout():
    assert set(SophonModel().state_dict()) == expected_weaver_keys()
    small = SophonModel(sophon_config(num_layers=2, num_cls_layers=1, embed_dims=(32, 64, 32),
                                      pair_embed_dims=(16,), num_heads=4, fc_params=()))
    assert set(small.state_dict()) == expected_weaver_keys(2, 1, 3, 2, 0)


def test_config_is_recovered_from_weights():
    config = sophon_config(num_layers=3, num_cls_layers=1, embed_dims=(64, 128, 32),
                           pair_embed_dims=(16, 8), num_heads=4, fc_params=((48, 0.1), (24, 0.1)),
                           num_classes=7, ffn_ratio=2)
    assert config_from_state_dict(SophonModel(config).state_dict()) == config
    assert config_from_state_dict(SophonModel().state_dict()) == sophon_config()


# --- numerics -------------------------------------------------------------------------------------


def test_outputs_are_probabilities_and_latent(model_outputs):
    probabilities, latent = model_outputs
    assert probabilities.shape == (100, 188) and latent.shape == (100, 128)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(100), atol=1e-5, rtol=0)
    assert torch.isfinite(latent).all() and (probabilities > 0).all()


def test_trimmed_padding_gives_the_128_slot_result(model, model_outputs, reference_inputs):
    features, vectors, mask, multiplicity = reference_inputs
    probabilities, latent = model_outputs
    order = np.argsort(multiplicity)
    with torch.no_grad():
        for bucket in np.array_split(order, 4):  # each bucket padded only to its longest jet
            length = int(multiplicity[bucket].max())
            rows = torch.from_numpy(bucket)
            p, z = model(features[rows, :, :length], vectors[rows, :, :length], mask[rows, :, :length])
            assert (p - probabilities[rows]).abs().max() < 1e-6
            assert (z - latent[rows]).abs().max() < 1e-5


def test_a_jet_scores_the_same_alone_and_in_a_batch(model, model_outputs, reference_inputs):
    features, vectors, mask, multiplicity = reference_inputs
    with torch.no_grad():
        for jet in (5, 40):
            n = int(multiplicity[jet])
            p, _ = model(features[jet:jet + 1, :, :n], vectors[jet:jet + 1, :, :n], mask[jet:jet + 1, :, :n])
            assert (p[0] - model_outputs[0][jet]).abs().max() < 1e-6


def test_cpu_attention_equals_scaled_dot_product_attention():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 9, 16, generator=generator) for _ in range(3))
    bias = torch.randn(3, 4, 9, 9, generator=generator)
    bias[:, :, :, 7:] = -math.inf  # two masked keys
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(_explicit_attention(q, k, v, bias, 0.0), expected, atol=1e-5, rtol=1e-5)


def test_pair_features_by_hand():
    # Two massless particles: pT 3 and 4 GeV, rapidity 0 and 0.5, azimuth 0 and 0.3.
    def vector(pt, rapidity, phi):
        return [pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(rapidity), pt * math.cosh(rapidity)]

    a, b = vector(3.0, 0.0, 0.0), vector(4.0, 0.5, 0.3)
    features = pairwise_features(torch.tensor([a], dtype=torch.float64)[:, :, None],
                                 torch.tensor([b], dtype=torch.float64)[:, :, None])[0, :, 0]
    delta = math.hypot(0.5, 0.3)
    summed = [x + y for x, y in zip(a, b, strict=True)]
    mass2 = summed[3] ** 2 - sum(c * c for c in summed[:3])
    expected = [math.log(3.0 * delta), math.log(3.0 / 7.0), math.log(delta), math.log(mass2)]
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-9)


# --- the weaver-core oracle -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weaver_outputs(model, reference_inputs):
    reference = weaver_model()
    reference.load_state_dict(model.state_dict(), strict=True)
    features, vectors, mask, _ = reference_inputs
    with torch.no_grad():
        return reference(features, vectors, mask)


def test_matches_weaver_core_on_the_reference_jets(model_outputs, weaver_outputs):
    probabilities, latent = model_outputs
    assert (probabilities - weaver_outputs[0]).abs().max().item() <= ORACLE_TOLERANCE
    assert (latent - weaver_outputs[1]).abs().max().item() <= ORACLE_TOLERANCE
    # Not trivially equal: the scores differ from jet to jet.
    assert probabilities.std(dim=0).max() > 1e-3


def test_the_small_configuration_matches_weaver_core_too(reference_inputs):
    """The embedded default's shape (3 blocks, 2-wide feed-forward, 16-wide pair embedding): the
    oracle built with the same keyword arguments gives the same outputs."""
    small = randomize_weights_(SophonModel(TRAINING_CONFIGS["small"]), seed=12).eval()
    reference = weaver_model(small.config)
    reference.load_state_dict(small.state_dict(), strict=True)
    features, vectors, mask, _ = reference_inputs
    with torch.no_grad():
        ours, theirs = small(features, vectors, mask), reference(features, vectors, mask)
    assert (ours[0] - theirs[0]).abs().max().item() <= ORACLE_TOLERANCE
    assert (ours[1] - theirs[1]).abs().max().item() <= ORACLE_TOLERANCE
    assert ours[0].std(dim=0).max() > 1e-3


def test_state_dicts_load_both_ways_strictly(model):
    reference = weaver_model()
    reference.load_state_dict(model.state_dict(), strict=True)
    back = SophonModel()
    back.load_state_dict(reference.state_dict(), strict=True)
    assert set(reference.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_checkpoint_file_round_trip(model, model_outputs, reference_inputs, tmp_path):
    path = save_checkpoint(model, tmp_path / "net_best_epoch_state.pt")
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary behind
    saved = torch.load(path, weights_only=True)
    assert all(key.startswith("mod.") for key in saved)
    loaded = load_checkpoint(path)
    features, vectors, mask, _ = reference_inputs
    with torch.no_grad():
        probabilities, _ = loaded(features[:20], vectors[:20], mask[:20])
    assert (probabilities - model_outputs[0][:20]).abs().max() < 1e-6
    # DDP prefixes and an unwrapped ParticleTransformer state dict are accepted too.
    ddp = {"module." + k: v for k, v in saved.items()}
    bare = {k[len("mod."):]: v for k, v in saved.items()}
    for variant in (ddp, bare, {"state_dict": saved}):
        again = load_checkpoint(variant)
        assert all(torch.equal(again.state_dict()[k], v) for k, v in saved.items())


def test_strict_loading_names_a_wrong_key(model):
    state = dict(model.state_dict())
    state["mod.blocks.0.fc9.weight"] = state.pop("mod.blocks.0.fc2.weight")
    with pytest.raises(RuntimeError, match="fc2.weight"):
        SophonModel().load_state_dict(state, strict=True)


# --- weaver-core <= 0.4 checkpoints ------------------------------------------------------------------


def legacy_block_forward(state: dict, x: torch.Tensor, heads: int) -> torch.Tensor:
    """weaver-core 0.4's particle block, spelled out independently: torch.nn.MultiheadAttention
    (sequence-first) and the per-head scale applied with einsum('tbhd,h->tbdh'), which also
    reorders the output channels."""
    embed = x.shape[-1]
    attention = torch.nn.MultiheadAttention(embed, heads)
    attention.load_state_dict({k[len("attn."):]: v for k, v in state.items() if k.startswith("attn.")})
    attention.eval()

    def layer_norm(name, value):
        return F.layer_norm(value, value.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"])

    sequence = x.transpose(0, 1)  # (P, N, E)
    residual = sequence
    h = attention(*(layer_norm("pre_attn_norm", sequence),) * 3, need_weights=False)[0]
    t = h.shape[0]
    h = torch.einsum("tbhd,h->tbdh", h.view(t, -1, heads, embed // heads), state["c_attn"])
    h = h.reshape(t, -1, embed)
    h = layer_norm("post_attn_norm", h) + residual
    residual = h
    u = F.gelu(F.linear(layer_norm("pre_fc_norm", h), state["fc1.weight"], state["fc1.bias"]))
    u = F.linear(layer_norm("post_fc_norm", u), state["fc2.weight"], state["fc2.bias"])
    return (u + state["w_resid"] * residual).transpose(0, 1)


def test_legacy_multihead_attention_checkpoint_keeps_its_function():
    torch.manual_seed(3)
    block = randomize_weights_(Block(32, 4), seed=4).eval()
    legacy = {k.replace("attn.in_proj.", "attn.in_proj_"): v.clone() for k, v in block.state_dict().items()}
    assert "attn.in_proj_weight" in legacy and "attn.in_proj.weight" not in legacy
    x = torch.randn(2, 7, 32)
    expected = legacy_block_forward(legacy, x, heads=4)

    converted = Block(32, 4).eval()
    converted.load_state_dict(dict(legacy), strict=True)
    with torch.no_grad():
        got = converted(x, torch.zeros(2, 4, 7, 7))
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)
    # Loading the same numbers as a current-layout checkpoint is a different function.
    with torch.no_grad():
        current = block(x, torch.zeros(2, 4, 7, 7))
    assert (current - expected).abs().max() > 1e-2


# --- CUDA (skipped without a GPU) ------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sdpa_and_half_precision_stay_within_1e_3(model, model_outputs, reference_inputs):
    features, vectors, mask, _ = (t.cuda() if torch.is_tensor(t) else t for t in reference_inputs)
    gpu = SophonModel(model.config).cuda().eval()
    gpu.load_state_dict(model.state_dict())
    with torch.no_grad():
        probabilities, _ = gpu(features, vectors, mask)
        assert (probabilities.cpu() - model_outputs[0]).abs().max() < 1e-4
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cuda", dtype=dtype):
                low, _ = gpu(features, vectors, mask)
            assert (low.float().cpu() - model_outputs[0]).abs().max() < 1e-3, dtype


def test_folded_pair_embedding_equals_the_module_path(model, reference_inputs):
    _, vectors, _, multiplicity = reference_inputs
    jets = vectors[:6, :, :40]
    pair_embed = model.mod.pair_embed
    with torch.no_grad():
        fast = pair_embed(jets)  # eval: BatchNorms folded, lower triangle only, mirrored
        grid = pairwise_features(jets.unsqueeze(-1), jets.unsqueeze(-2))  # (N, 4, P, P)
        slow = pair_embed.embed(grid.flatten(2)).view(6, 8, 40, 40)  # the weaver-core module path
    assert (fast - slow).abs().max() < 1e-4 * slow.abs().max()
    assert torch.equal(fast, fast.transpose(2, 3))


def test_a_small_configuration_trains():
    torch.manual_seed(0)
    small = SophonModel(sophon_config(num_layers=2, num_cls_layers=1, embed_dims=(32, 32),
                                      pair_embed_dims=(16,), num_heads=4, fc_params=((32, 0.1),),
                                      num_classes=5))
    small.train()
    features, vectors = torch.randn(6, 17, 12), torch.rand(6, 4, 12) + 0.1
    vectors[:, 3] = vectors[:, :3].norm(dim=1) * 1.5  # physical: E > |p|
    mask = torch.ones(6, 1, 12)
    mask[:3, :, 8:] = 0
    logits, latent = small.logits_and_latent(features, vectors, mask)
    loss = F.cross_entropy(logits, torch.arange(6) % 5)
    loss.backward()
    assert latent.shape == (6, 32)
    for name, parameter in small.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
