"""Small helpers shared by several test modules."""

import torch
from torch import nn


def trained_like_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and every norm layer random affine parameters, as
    training would, and return the model in eval mode.

    Fresh BNs are identities, so a wrong BN fold would go unseen. Fresh LayerNorms give every
    position the same norm, so FRM's adaptive polyphase pooling sees four exactly tied components
    and any rounding flips its pick; after training (and here) they differ by 1e-4 to 1e-2
    relative, far above float rounding.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=g) * (high - low) + low

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(uniform(m.num_features, -0.2, 0.2))
                m.running_var.copy_(uniform(m.num_features, 0.5, 2.0))
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(uniform(m.weight.numel(), 0.5, 1.5).view_as(m.weight))
                m.bias.copy_(uniform(m.bias.numel(), -0.2, 0.2).view_as(m.bias))
    return model.eval()
