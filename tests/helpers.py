"""Small helpers shared by several test modules."""

import contextlib
import socket
import threading
import time

import torch
from torch import nn

from lightseg.meta import ModelMeta


class TinySeg(nn.Module):
    """A one-conv segmentor (stride 8) with lightseg metadata: exports in a second, for tests of
    the deploy layer itself (caching, foreign files, the measured default path)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 8, stride=8)
        self.num_classes, self.size_divisor = num_classes, 8
        self.meta = ModelMeta(name="tiny", num_classes=num_classes, size_divisor=8, output_stride=8)

    def forward(self, x):
        return self.conv(x)


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


@contextlib.contextmanager
def serving(app, **options):
    """Run a :func:`lightseg.serve.create_app` application as ``lightseg serve`` does (its limits
    and connection layer) on uvicorn in a thread, on a free 127.0.0.1 port; yields the port."""
    import uvicorn

    from lightseg.serve import server_config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    options = {"log_level": "warning", "access_log": False, **options}
    server = uvicorn.Server(server_config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
