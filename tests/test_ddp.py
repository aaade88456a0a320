"""Layers under torch's DistributedDataParallel: DDP matches parameters and buffers
between processes by position, so their order must not depend on the process
(escnn registers its basis blocks while iterating over sets, whose order follows
PYTHONHASHSEED; pyg_implicit puts them in name order)."""
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BUILD = r"""
import torch
from escnn import gspaces, nn as enn
from pyg_implicit import ImplicitPointConv
from pyg_implicit.nn import EquivariantLinear

torch.manual_seed(0)
gs = gspaces.flipRot3dOnR3()
G = gs.fibergroup
ft = enn.FieldType(gs, [G.irrep(1, 1)] * 2 + [G.irrep(0, 2)] + [G.trivial_representation] * 2)
model = torch.nn.ModuleList([ImplicitPointConv(ft, ft), EquivariantLinear(ft, ft)])
"""

_NAMES = _BUILD + r"""
print([n for n, _ in model.named_buffers()], [n for n, _ in model.named_parameters()])
"""

_DDP = _BUILD + r"""
import torch.distributed as dist
dist.init_process_group("gloo")
g = torch.Generator().manual_seed(1)
pos, x = torch.randn(12, 3, generator=g), torch.randn(12, ft.size, generator=g)
edge_index = torch.randint(0, 12, (2, 40), generator=g)

class Net(torch.nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = layers
    def forward(self, x):
        return self.layers[1](self.layers[0](x, pos, edge_index))

net = Net(model)
with torch.no_grad():
    expected = net(x)
ddp = torch.nn.parallel.DistributedDataParallel(net)  # default: broadcast_buffers=True
with torch.no_grad():
    out = ddp(x)
err = float((out - expected).abs().max() / expected.abs().max())
print("rank", dist.get_rank(), "error", err)
assert err < 1e-6, err
dist.destroy_process_group()
"""


def _env(seed, **extra):
    return dict(os.environ, PYTHONHASHSEED=str(seed), OMP_NUM_THREADS="1",
                PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def test_module_order_does_not_follow_the_hash_seed():
    names = [subprocess.run([sys.executable, "-c", _NAMES], env=_env(seed), capture_output=True,
                            text=True, timeout=300, check=True).stdout for seed in (1, 2, 3)]
    assert names[0] and names[0] == names[1] == names[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo over loopback")
def test_ddp_with_buffer_broadcast_keeps_every_process_exact():
    """Two processes with different hash seeds, DDP with its default buffer broadcast:
    each computes what the unwrapped model computes."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", _DDP],
                              env=_env(1 + rank, RANK=str(rank), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    assert all("error" in o for o in outputs)
