"""weaver-core's ParticleTransformer in the Sophon configuration: the reference implementation
that the project's model is checked and benchmarked against.

weaver-core is an optional, test-only dependency (extra ``oracle``); :func:`weaver_reference`
returns None when it is not installed.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["weaver_reference"]


def weaver_reference(state_dict: dict | None = None) -> torch.nn.Module | None:
    """The published network: weaver-core's ParticleTransformer wrapped as attribute ``mod``,
    with ``state_dict`` loaded strictly when given. ``forward(pf_features, pf_vectors, pf_mask)``
    returns (softmax (N, 188), latent (N, 128)) as the published ONNX export does. Eval mode."""
    try:
        from weaver.nn.model.ParticleTransformer import ParticleTransformer
    except ImportError:
        return None
    logging.getLogger("weaver").setLevel(logging.WARNING)

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mod = ParticleTransformer(
                input_dim=17, num_classes=188, pair_input_dim=4, use_pre_activation_pair=True,
                embed_dims=[128, 512, 128], pair_embed_dims=[64, 64, 64], num_heads=8,
                num_layers=8, num_cls_layers=2,
                cls_block_params={"dropout": 0, "attn_dropout": 0, "activation_dropout": 0},
                fc_params=[(512, 0.1)], activation="gelu", for_inference=True)

        def forward(self, features, vectors, mask):
            x, padding_mask = self.mod._forward_encoder(features, v=vectors, mask=mask)
            latent = self.mod._forward_aggregator(x, padding_mask)
            return torch.softmax(self.mod.fc(latent).float(), dim=1), latent

    reference = Reference().eval()
    if state_dict is not None:
        reference.load_state_dict(state_dict, strict=True)
    return reference
