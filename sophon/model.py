"""The Sophon network: a Particle Transformer (ParT, arXiv:2202.03772) in the Sophon configuration.

Layout and numerics follow weaver-core's ``weaver.nn.model.ParticleTransformer`` (the reference
implementation named by the published model contract), written afresh around
``torch.nn.functional.scaled_dot_product_attention`` with the pair-interaction features as an additive
float mask (on the CPU the same softmax(QK^T/sqrt(d) + bias)V is spelled out as batched matrix
products, 2-3x faster there than SDPA's CPU kernel at these sizes). In eval mode the pair-embedding
BatchNorms are folded into its 1x1 convolutions, and symmetric pair features are embedded once per
unordered pair. Module and parameter names reproduce weaver-core's, and :class:`SophonModel` wraps the
network as attribute ``mod`` exactly like the published checkpoint, so its state-dict keys are the
published ones (``mod.embed.input_bn.weight``, ``mod.blocks.0.attn.in_proj.weight``, ...)::

    model = SophonModel()                       # Sophon defaults: 2,304,688 parameters
    model.load_state_dict(torch.load("net_best_epoch_state.pt"), strict=True)
    probabilities, latent = model(pf_features, pf_vectors, pf_mask)   # (N, 188), (N, 128)

Inputs are ``pf_features`` (N, 17, P), ``pf_vectors`` (N, 4, P) = (px, py, pz, E) in GeV scaled to jet
pT = 500 GeV, ``pf_mask`` (N, 1, P) with 1 for a real particle (see :mod:`sophon.features`). P may be
anything up to 128: padded slots are masked out of every attention, so trimming trailing padding
changes nothing (that is what the fast scorer in :mod:`sophon.scoring` exploits).

Checkpoints written by weaver-core <= 0.4 (``torch.nn.MultiheadAttention`` keys ``attn.in_proj_weight``)
load too. Those versions applied the per-head scale ``c_attn`` with ``einsum('tbhd,h->tbdh')``, which
also permutes the 128 attention-output channels (head-minor instead of head-major); weaver-core 0.5
dropped that permutation without converting old checkpoints. Loading such a checkpoint here folds the
permutation and ``c_attn`` into ``out_proj`` (exactly, no approximation), so the network computes what
it was trained to compute. See :func:`convert_legacy_attention`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sophon.atomic import atomic_output

__all__ = [
    "SOPHON_PARAMETER_COUNT",
    "SophonConfig",
    "sophon_config",
    "ParticleTransformer",
    "SophonModel",
    "pairwise_features",
    "convert_legacy_attention",
    "normalize_state_dict",
    "head_probabilities",
    "config_from_state_dict",
    "load_checkpoint",
    "load_checkpoint_file",
    "save_checkpoint",
    "randomize_weights_",
    "count_parameters",
    "masked_batch_norm",
    "freeze_batch_norms",
]

SOPHON_PARAMETER_COUNT = 2_304_688
# Clamp used by weaver-core before every logarithm of the pair features.
PAIR_EPS = 1e-8
# Particle slots of the published inputs; longer inputs work, with pair indices built per call.
MAX_PAIR_LENGTH = 128


@dataclass(frozen=True)
class SophonConfig:
    """Network hyper-parameters, named as weaver-core's ``ParticleTransformer`` keyword arguments.

    Defaults are the published Sophon configuration. ``fc_params``: one ``(width, dropout)`` per hidden
    layer of the head (ReLU, as in weaver-core), then a linear layer to ``num_classes``.
    """

    input_dim: int = 17
    num_classes: int = 188
    pair_input_dim: int = 4
    use_pre_activation_pair: bool = True
    embed_dims: tuple[int, ...] = (128, 512, 128)
    pair_embed_dims: tuple[int, ...] = (64, 64, 64)
    num_heads: int = 8
    num_layers: int = 8
    num_cls_layers: int = 2
    fc_params: tuple[tuple[int, float], ...] = ((512, 0.1),)
    activation: str = "gelu"
    # Dropout of the particle-attention blocks (class-attention blocks use none, as in Sophon).
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation_dropout: float = 0.1
    ffn_ratio: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "embed_dims", tuple(int(d) for d in self.embed_dims))
        object.__setattr__(self, "pair_embed_dims", tuple(int(d) for d in self.pair_embed_dims))
        object.__setattr__(self, "fc_params", tuple((int(w), float(p)) for w, p in self.fc_params))
        if not self.embed_dims:
            raise ValueError("embed_dims must name at least one layer")
        if self.embed_dims[-1] % self.num_heads:
            raise ValueError(f"embedding width {self.embed_dims[-1]} is not divisible by "
                             f"num_heads={self.num_heads}")
        if self.pair_input_dim != 4:
            raise ValueError("only the 4 pairwise features (ln kT, ln z, ln dR, ln m^2) are supported")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', not {self.activation!r}")

    @property
    def embed_dim(self) -> int:
        """Width of the particle tokens and of the latent vector."""
        return self.embed_dims[-1]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sophon_config(**overrides: Any) -> SophonConfig:
    """The published Sophon configuration, optionally with some fields replaced (smaller models)."""
    return replace(SophonConfig(), **overrides)


def _activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU()


def _on_rows(layer: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``layer`` (a linear map of 2-d (rows, in) inputs) over the last axis of ``x`` (..., in) ->
    (..., out). The same numbers as on ``x`` itself, but the exported graph gets one Gemm with the
    bias inside instead of a MatMul and an Add (and onnxruntime's whole-tensor Gelu after it
    instead of its BiasGelu, which runs row by row: slow on rows of 16-64 channels)."""
    out = layer(x.reshape(-1, x.shape[-1]))
    return out.view(*x.shape[:-1], out.shape[-1])


# ---------------------------------------------------------------------------------------------------
# Pair features


def _atan2(y: Tensor, x: Tensor) -> Tensor:
    """``torch.atan2``; while exporting to ONNX (which has no Atan2 operator, and whose stock
    decomposition divides by x, giving NaN at x = y = 0, i.e. in every padded slot) the same branches
    are spelled out with x = 0 handled explicitly."""
    if not torch.onnx.is_in_onnx_export():
        return torch.atan2(y, x)
    base = torch.atan(y / torch.where(x == 0, torch.ones_like(x), x))
    result = torch.where(x > 0, base, torch.where(y >= 0, base + math.pi, base - math.pi))
    return torch.where(x == 0, torch.sign(y) * (math.pi / 2), result)


def _particle_kinematics(vectors: Tensor, dim: int) -> Tensor:
    """Four-momenta (px, py, pz, E) along ``dim`` -> seven numbers there: px, py, pz, E, rapidity,
    azimuth, pT. Computed once per particle, so the pair features need no logarithm, square root
    or arctangent per pair beyond their own."""
    px, py, pz, energy = vectors.unbind(dim)
    pt = torch.sqrt(px.square() + py.square())
    # 0.5 ln((E + pz) / (E - pz)), written to stay finite for a massless particle along +z.
    rapidity = 0.5 * torch.log(1 + (2 * pz) / (energy - pz).clamp(min=1e-20))
    phi = _atan2(py, px)
    return torch.stack((px, py, pz, energy, rapidity, phi, pt), dim=dim)


def _pair_features(kinematics_i: Tensor, kinematics_j: Tensor, dim: int, eps: float) -> Tensor:
    """ln kT, ln z, ln dR, ln m^2 (stacked along ``dim``) of the particles whose
    :func:`_particle_kinematics` are ``kinematics_i`` and ``kinematics_j``."""
    px_i, py_i, pz_i, energy_i, rapidity_i, phi_i, pt_i = kinematics_i.unbind(dim)
    px_j, py_j, pz_j, energy_j, rapidity_j, phi_j, pt_j = kinematics_j.unbind(dim)
    delta_phi = torch.remainder(phi_i - phi_j + math.pi, 2 * math.pi) - math.pi
    delta = torch.sqrt((rapidity_i - rapidity_j).square() + delta_phi.square())
    pt_min = torch.minimum(pt_i, pt_j)
    ln_kt = torch.log((pt_min * delta).clamp(min=eps))
    ln_z = torch.log((pt_min / (pt_i + pt_j).clamp(min=eps)).clamp(min=eps))
    ln_delta = torch.log(delta.clamp(min=eps))
    mass2 = ((energy_i + energy_j).square()
             - ((px_i + px_j).square() + (py_i + py_j).square() + (pz_i + pz_j).square()))
    ln_m2 = torch.log(mass2.clamp(min=eps))
    return torch.stack((ln_kt, ln_z, ln_delta, ln_m2), dim=dim)


def pairwise_features(vectors_i: Tensor, vectors_j: Tensor, eps: float = PAIR_EPS) -> Tensor:
    """ParT's four pair features of particles i and j: ln kT, ln z, ln dR, ln m^2.

    ``vectors_*``: (N, 4, ...) four-momenta (px, py, pz, E). Returns (N, 4, ...). Definitions
    (weaver-core ``pairwise_lv_fts``): dR from rapidity and azimuth, kT = min(pT_i, pT_j) dR,
    z = min(pT) / (pT_i + pT_j), m^2 of the pair's summed four-momentum; every logarithm's argument
    is clamped at ``eps``.
    """
    return _pair_features(_particle_kinematics(vectors_i, 1), _particle_kinematics(vectors_j, 1),
                          1, eps)


class PairEmbedding(nn.Module):
    """Pair features -> one additive attention bias per head, (N, num_heads, P, P).

    ``embed``: BatchNorm, then per width (Conv1d k=1, BatchNorm, activation); the last activation is
    dropped when ``use_pre_activation_pair`` (weaver-core's layout, indices included). The features
    are symmetric in (i, j), so they are embedded once per unordered pair and mirrored.
    """

    def __init__(self, pair_input_dim: int, dims: Sequence[int], *, use_pre_activation_pair: bool,
                 activation: str):
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(pair_input_dim)]
        width = pair_input_dim
        for dim in dims:
            layers += [nn.Conv1d(width, dim, 1), nn.BatchNorm1d(dim), _activation(activation)]
            width = dim
        if use_pre_activation_pair:
            layers = layers[:-1]
        self.embed = nn.Sequential(*layers)
        self.out_dim = int(dims[-1])
        # Lower-triangle (i >= j) pair indices, row by row, for the longest jet: those of a shorter
        # length L are the first L (L + 1) / 2 entries, and ``pair_slot[:L, :L]`` maps (i, j) to the
        # entry of the unordered pair, so slicing needs no shape-dependent call (which keeps
        # torch.compile from specialising on every length, and the ONNX graph free of loops).
        # Not saved in checkpoints.
        rows, cols = torch.tril_indices(MAX_PAIR_LENGTH, MAX_PAIR_LENGTH)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.register_buffer("pair_slot", _pair_slots(MAX_PAIR_LENGTH), persistent=False)

    def folded_layers(self) -> list[tuple[Tensor, Tensor, nn.Module | None]]:
        """``embed`` with eval-mode BatchNorms folded into the convolutions, as (weight (out, in),
        bias (out,), activation or None) per layer: the same map with four fewer passes over the
        (pairs x channels) tensor."""
        layers: list[tuple[Tensor, Tensor, nn.Module | None]] = []
        input_scale: Tensor | None = None
        input_shift: Tensor | None = None
        for module in self.embed:
            if isinstance(module, nn.BatchNorm1d):
                scale = module.weight / torch.sqrt(module.running_var + module.eps)
                shift = module.bias - module.running_mean * scale
                if not layers:  # normalises the raw pair features: fold into the next layer's input
                    input_scale, input_shift = scale, shift
                else:
                    weight, bias, _ = layers[-1]
                    layers[-1] = (weight * scale[:, None], bias * scale + shift, None)
            elif isinstance(module, nn.Conv1d):
                weight, bias = module.weight[:, :, 0], module.bias
                if input_scale is not None:
                    bias = bias + weight @ input_shift
                    weight = weight * input_scale[None, :]
                    input_scale = input_shift = None
                layers.append((weight, bias, None))
            else:  # activation
                weight, bias, _ = layers[-1]
                layers[-1] = (weight, bias, module)
        return layers

    def forward(self, vectors: Tensor, valid: Tensor | None = None) -> Tensor:
        """``vectors`` (N, 4, P) -> bias (N, out_dim, P, P), equal in (i, j) and (j, i).

        ``valid`` (N, P) bool marks the real particles; BatchNorms that are training take their
        statistics over the pairs of real particles only (see :func:`masked_batch_norm`).

        Pairs lead the layout, (pairs, N, channels): every gather (the particles of each pair, the
        pairs of each cell of the P x P grid) then copies whole rows of N x channels numbers, which
        onnxruntime's Gather does about eight times faster than one number at a time."""
        length = vectors.shape[2]
        if length <= MAX_PAIR_LENGTH:
            n_pairs = length * (length + 1) // 2
            rows, cols = self.pair_rows[:n_pairs], self.pair_cols[:n_pairs]
            slots = self.pair_slot[:length, :length]
        else:
            rows, cols = torch.tril_indices(length, length, device=vectors.device)
            slots = _pair_slots(length, device=vectors.device)
        particles = _particle_kinematics(vectors.permute(2, 0, 1), -1)  # (P, N, 7)
        features = _pair_features(particles[rows], particles[cols], -1, PAIR_EPS)  # (pairs, N, 4)
        if any(m.training for m in self.embed if isinstance(m, nn.BatchNorm1d)):
            # BatchNorm needs batch statistics: the module path, over real pairs only
            valid_pairs = None if valid is None else valid[:, rows] & valid[:, cols]
            hidden = features.permute(1, 2, 0)  # (N, 4, pairs)
            for module in self.embed:
                if isinstance(module, nn.BatchNorm1d):
                    hidden = masked_batch_norm(module, hidden, valid_pairs)
                else:
                    hidden = module(hidden)
            hidden = hidden.permute(2, 0, 1)
        else:
            # Fixed statistics (inference, or training with frozen BatchNorms): one matrix product
            # per layer.
            hidden = features.reshape(-1, features.shape[-1])  # 2-d: see _on_rows
            for weight, layer_bias, activation in self.folded_layers():
                hidden = F.linear(hidden, weight.to(hidden.dtype), layer_bias.to(hidden.dtype))
                if activation is not None:
                    hidden = activation(hidden)
            hidden = hidden.view(*features.shape[:2], -1)
        # One gather mirrors the unordered pairs onto the P x P grid (both triangles at once).
        return hidden[slots].permute(2, 3, 0, 1).contiguous()


def _pair_slots(length: int, device: torch.device | str | None = None) -> Tensor:
    """(length, length) int64: entry (i, j) is the position of the unordered pair {i, j} among the
    lower-triangle pairs listed row by row (``torch.tril_indices`` order), i.e. r (r + 1) / 2 + c
    with r = max(i, j), c = min(i, j)."""
    index = torch.arange(length, device=device)
    high = torch.maximum(index[:, None], index[None, :])
    low = torch.minimum(index[:, None], index[None, :])
    return high * (high + 1) // 2 + low


def masked_batch_norm(norm: nn.BatchNorm1d, x: Tensor, valid: Tensor | None) -> Tensor:
    """``norm`` applied to ``x`` (N, C, L), with batch statistics over the entries that ``valid``
    (N, L) bool marks (all when ``None``) while ``norm`` is training; its running statistics are
    updated from those entries as ``nn.BatchNorm1d`` updates them.

    Why: training batches are bucketed by multiplicity, so the share of padded slots (zeros, and
    log(eps) pair features) changes from batch to batch; statistics that include them differ from
    the running ones used in evaluation, which made early validation accuracy collapse. An eval-mode
    ``norm`` is applied unchanged, so inference and the published layout are untouched.
    """
    if not norm.training or valid is None:
        return norm(x)
    weight = valid.unsqueeze(1).to(torch.float32)  # (N, 1, L)
    values = x.float()
    count = weight.sum().clamp(min=2.0)
    mean = (values * weight).sum(dim=(0, 2)) / count
    var = ((values - mean[None, :, None]).square() * weight).sum(dim=(0, 2)) / count
    with torch.no_grad():
        momentum = 0.1 if norm.momentum is None else norm.momentum
        norm.running_mean.lerp_(mean.detach(), momentum)
        norm.running_var.lerp_(var.detach() * count / (count - 1), momentum)
        norm.num_batches_tracked.add_(1)
    scale = norm.weight * torch.rsqrt(var + norm.eps)
    return values * scale[None, :, None] + (norm.bias - mean * scale)[None, :, None]


def freeze_batch_norms(model: nn.Module) -> int:
    """Put every BatchNorm of ``model`` in eval mode (running statistics, affine still trained);
    returns how many. Training after this computes exactly what evaluation computes."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.eval()
    return len(norms)


# ---------------------------------------------------------------------------------------------------
# Particle embedding and attention blocks


class ParticleEmbedding(nn.Module):
    """BatchNorm over the input channels, then per width (LayerNorm, Linear, activation)."""

    def __init__(self, input_dim: int, dims: Sequence[int], activation: str):
        super().__init__()
        self.input_bn = nn.BatchNorm1d(input_dim)
        layers: list[nn.Module] = []
        width = input_dim
        for dim in dims:
            layers += [nn.LayerNorm(width), nn.Linear(width, dim), _activation(activation)]
            width = dim
        self.embed = nn.Sequential(*layers)

    def forward(self, features: Tensor, valid: Tensor | None = None) -> Tensor:
        """(N, C, P) -> (N, P, embed_dim); ``valid`` (N, P) bool: the real particles, over which a
        training BatchNorm takes its statistics."""
        x = masked_batch_norm(self.input_bn, features, valid).transpose(1, 2)
        for module in self.embed:
            x = _on_rows(module, x) if isinstance(module, nn.Linear) else module(x)
        return x


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout: float) -> Tensor:
    """softmax(q k^T / sqrt(d) + bias) v for (N, H, L, d) tensors, as batched matrix products.

    The same function as ``scaled_dot_product_attention``; on the CPU its flash kernel is ~2.5x slower
    than this at ParT sizes (head width 16, ~50 particles), so CPU runs take this path.
    """
    batch, heads, queries, width = q.shape
    keys = k.shape[2]
    q, k, v = (t.reshape(batch * heads, -1, width) for t in (q, k, v))
    scores = torch.baddbmm(bias.expand(batch, heads, queries, keys).reshape(batch * heads, queries, keys),
                           q, k.transpose(1, 2), alpha=1.0 / math.sqrt(width))
    weights = F.dropout(torch.softmax(scores, dim=-1), dropout, training=dropout > 0)
    return torch.bmm(weights, v).view(batch, heads, queries, width)


class Attention(nn.Module):
    """Multi-head attention with packed ``in_proj`` (q, k, v) and ``out_proj``, as in weaver-core."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _split_heads(self, packed: Tensor, parts: int) -> tuple[Tensor, ...]:
        """(N, L, parts * E) projections -> ``parts`` tensors (N, H, L, d_h) (views)."""
        batch, length, _ = packed.shape
        return packed.view(batch, length, parts, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)

    def forward(self, query: Tensor, key_value: Tensor | None, bias: Tensor,
                head_scale: Tensor | None = None) -> Tensor:
        """``query`` (N, Q, E) attends to ``key_value`` (N, K, E) (``None``: to itself) under the
        additive float ``bias`` broadcastable to (N, num_heads, Q, K) (-inf removes a key).
        Returns (N, Q, E) after ``out_proj``, each head's channels multiplied by ``head_scale``
        (num_heads,) when given (ParT's ``c_attn``): folded into ``out_proj``'s weights, which
        saves the exported graph a pass over the output."""
        if key_value is None:
            q, k, v = self._split_heads(_on_rows(self.in_proj, query), 3)
        else:
            w_q, w_kv = self.in_proj.weight.split((self.embed_dim, 2 * self.embed_dim))
            b_q, b_kv = self.in_proj.bias.split((self.embed_dim, 2 * self.embed_dim))
            (q,) = self._split_heads(_on_rows(lambda rows: F.linear(rows, w_q, b_q), query), 1)
            k, v = self._split_heads(_on_rows(lambda rows: F.linear(rows, w_kv, b_kv), key_value), 2)
        dropout = self.dropout if self.training else 0.0
        bias = bias.to(q.dtype)
        if q.device.type == "cpu" and not torch.onnx.is_in_onnx_export():
            out = _explicit_attention(q, k, v, bias, dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        batch, _, length, _ = out.shape
        weight, out_bias = self.out_proj.weight, self.out_proj.bias
        if head_scale is not None:  # output channel h * head_dim + d belongs to head h
            channel_scale = head_scale.repeat_interleave(self.head_dim).to(weight.dtype)
            weight, out_bias = weight * channel_scale[:, None], out_bias * channel_scale
        return F.linear(out.transpose(1, 2).reshape(batch * length, self.embed_dim), weight,
                        out_bias).view(batch, length, self.embed_dim)


def convert_legacy_attention(state_dict: dict[str, Tensor], prefix: str, num_heads: int) -> bool:
    """Rewrite, in place, one block's weaver-core <= 0.4 attention weights for this implementation.

    ``prefix`` is the block's (``"mod.blocks.0."``). Returns False (nothing done) unless the block is
    in the legacy ``nn.MultiheadAttention`` layout (``attn.in_proj_weight``). Legacy semantics after
    ``out_proj`` (z, channel h * d_h + d) were ``y[d * H + h] = c_attn[h] * z[h * d_h + d]``; the same
    map is obtained here with ``out_proj`` rows permuted and scaled and ``c_attn`` set to one.
    """
    legacy_weight = prefix + "attn.in_proj_weight"
    if legacy_weight not in state_dict:
        return False
    state_dict[prefix + "attn.in_proj.weight"] = state_dict.pop(legacy_weight)
    if prefix + "attn.in_proj_bias" in state_dict:
        state_dict[prefix + "attn.in_proj.bias"] = state_dict.pop(prefix + "attn.in_proj_bias")
    scale_key, weight_key, bias_key = (prefix + "c_attn", prefix + "attn.out_proj.weight",
                                       prefix + "attn.out_proj.bias")
    if scale_key in state_dict and weight_key in state_dict:
        head_scale = state_dict[scale_key]
        weight = state_dict[weight_key]
        embed_dim = weight.shape[0]
        head_dim = embed_dim // num_heads
        # New channel d * H + h reads old channel h * d_h + d, scaled by c_attn[h].
        source = torch.arange(embed_dim).view(num_heads, head_dim).t().reshape(-1)
        row_scale = head_scale.repeat(head_dim).to(weight.dtype)
        state_dict[weight_key] = weight[source] * row_scale[:, None]
        if bias_key in state_dict:
            state_dict[bias_key] = state_dict[bias_key][source] * row_scale
        state_dict[scale_key] = torch.ones_like(head_scale)
    return True


class Block(nn.Module):
    """A normformer-style ParT block; particle attention or, with ``x_cls``, class attention.

    Parameter names are weaver-core's: ``pre_attn_norm``, ``attn``, ``post_attn_norm``,
    ``pre_fc_norm``, ``fc1``, ``post_fc_norm``, ``fc2``, per-head scale ``c_attn`` and residual scale
    ``w_resid``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, ffn_ratio: int = 4, dropout: float = 0.1,
                 attn_dropout: float = 0.1, activation_dropout: float = 0.1, activation: str = "gelu"):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        ffn_dim = embed_dim * ffn_ratio
        self.pre_attn_norm = nn.LayerNorm(embed_dim)
        self.attn = Attention(embed_dim, num_heads, attn_dropout)
        self.post_attn_norm = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.pre_fc_norm = nn.LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.act = _activation(activation)
        self.act_dropout = nn.Dropout(activation_dropout)
        self.post_fc_norm = nn.LayerNorm(ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads))
        self.w_resid = nn.Parameter(torch.ones(embed_dim))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # noqa: D401 - torch hook
        convert_legacy_attention(state_dict, prefix, self.num_heads)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor, bias: Tensor, x_cls: Tensor | None = None) -> Tensor:
        """Particle attention: ``x`` (N, P, E) with pair bias (N, H, P, P) -> (N, P, E).
        Class attention: ``x_cls`` (N, 1, E) attends to [x_cls, x] under ``bias`` (N, 1, 1, 1 + P)
        -> (N, 1, E)."""
        if x_cls is None:
            residual = x
            h = self.attn(self.pre_attn_norm(x), None, bias, self.c_attn)
        else:
            # Class attention (CaiT, arXiv:2103.17239): the un-normalised class token queries the
            # normalised sequence that starts with itself.
            residual = x_cls
            h = self.attn(x_cls, self.pre_attn_norm(torch.cat((x_cls, x), dim=1)), bias, self.c_attn)
        h = self.dropout(self.post_attn_norm(h))
        x = h + residual

        residual = x
        h = self.act_dropout(self.act(_on_rows(self.fc1, self.pre_fc_norm(x))))
        h = self.dropout(_on_rows(self.fc2, self.post_fc_norm(h)))
        return h + self.w_resid * residual


class ParticleTransformer(nn.Module):
    """ParT with weaver-core's module names (keyword arguments as :class:`SophonConfig`).

    ``forward(pf_features, pf_vectors, pf_mask)`` returns ``(logits, latent)``: (N, num_classes)
    head outputs before the softmax and the (N, embed_dim) layer-normalised class token entering the
    head.
    """

    def __init__(self, **kwargs: Any):
        super().__init__()
        config = kwargs.pop("config", None) or SophonConfig(**kwargs)
        self.config = config
        embed_dim = config.embed_dim
        self.embed = ParticleEmbedding(config.input_dim, config.embed_dims, config.activation)
        self.pair_embed = PairEmbedding(
            config.pair_input_dim, (*config.pair_embed_dims, config.num_heads),
            use_pre_activation_pair=config.use_pre_activation_pair, activation=config.activation)
        block = dict(ffn_ratio=config.ffn_ratio, activation=config.activation)
        self.blocks = nn.ModuleList(
            Block(embed_dim, config.num_heads, dropout=config.dropout, attn_dropout=config.attn_dropout,
                  activation_dropout=config.activation_dropout, **block)
            for _ in range(config.num_layers))
        self.cls_blocks = nn.ModuleList(
            Block(embed_dim, config.num_heads, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0,
                  **block)
            for _ in range(config.num_cls_layers))
        self.norm = nn.LayerNorm(embed_dim)
        head: list[nn.Module] = []
        width = embed_dim
        for hidden, drop in config.fc_params:
            head.append(nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(drop)))
            width = hidden
        head.append(nn.Linear(width, config.num_classes))
        self.fc = nn.Sequential(*head)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weaver-core's default initialisation: truncated normal class token, Xavier-uniform
        linear layers (q, k, v treated separately) with zero biases."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith("in_proj"):
                    bound = math.sqrt(6.0 / float(module.weight.shape[0] // 3 + module.weight.shape[1]))
                    nn.init.uniform_(module.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Down-scale each particle block's output projections with depth, as weaver-core does.
        for depth, block in enumerate(self.blocks, start=1):
            with torch.no_grad():
                block.attn.out_proj.weight.div_(math.sqrt(2.0 * depth))
                block.fc2.weight.div_(math.sqrt(2.0 * depth))

    def forward(self, pf_features: Tensor, pf_vectors: Tensor, pf_mask: Tensor) -> tuple[Tensor, Tensor]:
        valid = pf_mask[:, 0] > 0  # (N, P)
        x = self.embed(pf_features, valid).masked_fill(~valid.unsqueeze(-1), 0.0)
        pair_bias = self.pair_embed(pf_vectors, valid)  # (N, H, P, P)
        key_bias = torch.zeros_like(valid, dtype=pair_bias.dtype).masked_fill(~valid, -math.inf)
        attn_bias = pair_bias + key_bias[:, None, None, :]
        device_type = pf_vectors.device.type
        if torch.is_autocast_enabled(device_type):  # cast once here, not in each of the 8 blocks
            attn_bias = attn_bias.to(torch.get_autocast_dtype(device_type))
        for block in self.blocks:
            x = block(x, attn_bias)

        # The class token sees itself and the real particles only.
        cls_bias = F.pad(key_bias, (1, 0))[:, None, None, :].to(x.dtype)
        x_cls = self.cls_token.expand(x.size(0), -1, -1)
        for block in self.cls_blocks:
            x_cls = block(x, cls_bias, x_cls=x_cls)
        latent = self.norm(x_cls.squeeze(1))
        return self.fc(latent), latent


class SophonModel(nn.Module):
    """The published wrapper: ``mod`` is the :class:`ParticleTransformer`.

    ``forward`` returns ``(probabilities, latent)``: (N, num_classes) softmax and the (N, 128) class
    token entering the head (the ``softmax`` output of the published ONNX file is their
    concatenation).
    """

    def __init__(self, config: SophonConfig | None = None, **overrides: Any):
        super().__init__()
        config = replace(config or SophonConfig(), **overrides)
        self.config = config
        self.mod = ParticleTransformer(config=config)

    def logits_and_latent(self, pf_features: Tensor, pf_vectors: Tensor,
                          pf_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Head outputs before the softmax (N, num_classes) and the latent (N, embed_dim)."""
        return self.mod(pf_features, pf_vectors, pf_mask)

    def forward(self, pf_features: Tensor, pf_vectors: Tensor, pf_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits, latent = self.mod(pf_features, pf_vectors, pf_mask)
        return torch.softmax(logits.float(), dim=1), latent


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (BatchNorm statistics are buffers, not counted)."""
    return sum(parameter.numel() for parameter in model.parameters())


def normalize_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Tensor]:
    """A checkpoint's state dict in the published ``mod.*`` layout.

    Accepts a bare state dict, one nested under ``"state_dict"``/``"model"``, DDP ``module.``
    prefixes, and an unwrapped ``ParticleTransformer`` (keys without ``mod.``).
    """
    for key in ("state_dict", "model", "model_state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            state_dict = state_dict[key]
            break
    result: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if not key.startswith("mod."):
            key = "mod." + key
        result[key] = value
    return result


def _layer_indices(state_dict: Mapping[str, Tensor], prefix: str) -> list[int]:
    indices = {int(key[len(prefix):].split(".")[0]) for key in state_dict if key.startswith(prefix)}
    return sorted(indices)


def config_from_state_dict(state_dict: Mapping[str, Tensor]) -> SophonConfig:
    """Infer the network shape from a ``mod.*`` state dict (widths, depths, heads, classes).

    ``activation`` and ``use_pre_activation_pair`` leave no trace in the weights; they take the
    Sophon values.
    """
    sd = state_dict
    try:
        input_dim = sd["mod.embed.input_bn.weight"].shape[0]
        embed_layers = _layer_indices(sd, "mod.embed.embed.")
        embed_dims = tuple(sd[f"mod.embed.embed.{i}.weight"].shape[0] for i in embed_layers
                           if sd[f"mod.embed.embed.{i}.weight"].dim() == 2)
        conv_widths = [sd[f"mod.pair_embed.embed.{i}.weight"].shape[0]
                       for i in _layer_indices(sd, "mod.pair_embed.embed.")
                       if sd[f"mod.pair_embed.embed.{i}.weight"].dim() == 3]
        num_heads = conv_widths[-1]
        fc_layers = _layer_indices(sd, "mod.fc.")
        hidden = tuple((sd[f"mod.fc.{i}.0.weight"].shape[0], 0.1) for i in fc_layers[:-1])
        num_classes = sd[f"mod.fc.{fc_layers[-1]}.weight"].shape[0]
        ffn_ratio = sd["mod.blocks.0.fc1.weight"].shape[0] // embed_dims[-1] \
            if "mod.blocks.0.fc1.weight" in sd else 4
    except (KeyError, IndexError) as error:
        raise ValueError(f"not a ParticleTransformer state dict (missing {error})") from None
    return SophonConfig(
        input_dim=input_dim, num_classes=num_classes, embed_dims=embed_dims,
        pair_embed_dims=tuple(conv_widths[:-1]), num_heads=num_heads,
        num_layers=len(_layer_indices(sd, "mod.blocks.")),
        num_cls_layers=len(_layer_indices(sd, "mod.cls_blocks.")),
        fc_params=hidden, ffn_ratio=ffn_ratio)


def load_checkpoint(source: str | os.PathLike | Mapping[str, Any], *,
                    config: SophonConfig | None = None, map_location: str | torch.device = "cpu",
                    ) -> SophonModel:
    """A :class:`SophonModel` in eval mode from a checkpoint file or state dict.

    The shape is read from the weights unless ``config`` is given; loading is strict, so a key or
    shape mismatch raises with the offending names.
    """
    if isinstance(source, Mapping):
        raw = source
    else:
        raw = torch.load(Path(source), map_location=map_location, weights_only=True)
    state_dict = normalize_state_dict(raw)
    model = SophonModel(config or config_from_state_dict(state_dict))
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def load_checkpoint_file(path: str | os.PathLike, *,
                         error: type[Exception] = ValueError) -> SophonModel:
    """:func:`load_checkpoint` of the file at ``path``, for a user's file: a missing or
    unloadable one raises ``error`` naming it and, on one line, why (torch.load and strict
    loading raise a dozen types of their own)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such model checkpoint")
    try:
        return load_checkpoint(path)
    except Exception as failure:
        reason = " ".join(str(failure).split())[:300]
        raise error(f"{path}: not a loadable Sophon checkpoint ({type(failure).__name__}"
                    f"{': ' + reason if reason else ''})") from None


def save_checkpoint(model: SophonModel, path: str | os.PathLike) -> Path:
    """Write ``model.state_dict()`` (published ``mod.*`` layout, weaver-core loadable) atomically."""
    with atomic_output(path) as temporary:
        torch.save(model.state_dict(), temporary)
    return Path(path)


@torch.no_grad()
def head_probabilities(model: SophonModel, latents: np.ndarray, *, batch_size: int = 65536) -> np.ndarray:
    """(N, num_classes) float32 softmax of ``model``'s head applied to (N, embed_dim) latents.

    The latent is the layer-normalised class token that enters the head, so these are exactly the
    probabilities the model gives for the jets those latents came from: a dataset may store only
    the latents and have its scores recomputed from them (:mod:`sophon.store`).
    """
    latents = np.asarray(latents, dtype=np.float32)
    if latents.ndim != 2 or latents.shape[1] != model.config.embed_dim:
        raise ValueError(f"latents must have shape (N, {model.config.embed_dim}), "
                         f"got {latents.shape}")
    head = model.mod.fc.eval()
    out = np.empty((len(latents), model.config.num_classes), dtype=np.float32)
    for start in range(0, len(latents), batch_size):
        chunk = torch.tensor(latents[start:start + batch_size])  # copies: input may be read-only
        out[start:start + len(chunk)] = torch.softmax(head(chunk).float(), dim=1).numpy()
    return out


@torch.no_grad()
def randomize_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and BatchNorm statistic with seeded random values, in place.

    Unlike the default initialisation (norms at identity, ``c_attn`` = ``w_resid`` = 1, BatchNorm
    mean 0 / variance 1), every weight then matters, so comparisons between implementations and
    round trips through files test all of them. Scales keep the softmax unsaturated.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(like: Tensor, std: float, mean: float = 0.0) -> Tensor:
        return torch.randn(like.shape, generator=generator, dtype=torch.float32).mul_(std).add_(mean)

    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            value = normal(tensor, 0.3).exp_()
        elif leaf == "running_mean":
            value = normal(tensor, 0.5)
        elif leaf in ("c_attn", "w_resid"):
            value = normal(tensor, 0.3, 1.0)
        elif leaf == "weight" and tensor.dim() == 1:  # LayerNorm / BatchNorm scale
            value = normal(tensor, 0.2, 1.0)
        elif leaf == "bias":
            value = normal(tensor, 0.1)
        elif tensor.dim() >= 2:
            fan_in = math.prod(tensor.shape[1:])
            value = normal(tensor, 1.0 / math.sqrt(fan_in))
        else:
            value = normal(tensor, 0.02)
        tensor.copy_(value.to(tensor.dtype))
    return model
