"""weaver-core's ParticleTransformer in the Sophon configuration: the reference implementation
that the project's model is checked and benchmarked against.

weaver-core is an optional, test-only dependency (extra ``oracle``); :func:`weaver_reference`
returns None when it is not installed.
"""

from __future__ import annotations

import logging

import torch

from sophon.model import SophonConfig

__all__ = ["weaver_reference"]


def weaver_reference(state_dict: dict | None = None,
                     config: SophonConfig | None = None) -> torch.nn.Module | None:
    """The published network: weaver-core's ParticleTransformer wrapped as attribute ``mod``,
    in ``config``'s shape (default: the published Sophon configuration), with ``state_dict``
    loaded strictly when given. ``forward(pf_features, pf_vectors, pf_mask)`` returns
    (softmax (N, 188), latent (N, 128)) as the published ONNX export does. Eval mode."""
    try:
        from weaver.nn.model.ParticleTransformer import ParticleTransformer
    except ImportError:
        return None
    logging.getLogger("weaver").setLevel(logging.WARNING)
    shape = config or SophonConfig()

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = shape  # as SophonModel's: sophon.export.export_onnx reads it
            self.mod = ParticleTransformer(
                input_dim=shape.input_dim, num_classes=shape.num_classes,
                pair_input_dim=shape.pair_input_dim,
                use_pre_activation_pair=shape.use_pre_activation_pair,
                embed_dims=list(shape.embed_dims), pair_embed_dims=list(shape.pair_embed_dims),
                num_heads=shape.num_heads, num_layers=shape.num_layers,
                num_cls_layers=shape.num_cls_layers,
                block_params={"ffn_ratio": shape.ffn_ratio},
                cls_block_params={"ffn_ratio": shape.ffn_ratio, "dropout": 0, "attn_dropout": 0,
                                  "activation_dropout": 0},
                fc_params=[list(layer) for layer in shape.fc_params], activation=shape.activation,
                for_inference=True)

        def forward(self, features, vectors, mask):
            x, padding_mask = self.mod._forward_encoder(features, v=vectors, mask=mask)
            latent = self.mod._forward_aggregator(x, padding_mask)
            return torch.softmax(self.mod.fc(latent).float(), dim=1), latent

    reference = Reference().eval()
    if state_dict is not None:
        reference.load_state_dict(state_dict, strict=True)
    return reference
