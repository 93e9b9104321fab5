"""A few SGD steps of small GFNets, on one process or data-parallel.

`torchrun --nproc-per-node 2 ddp_train.py ddp,fsdp OUT` trains with DistributedDataParallel, then FSDP2
(`fully_shard`), and writes every rank's final weights to OUT/{mode}.rank{r}.safetensors; `train` without a shard is
the single-process reference on the same global batches.
"""
import sys
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_gfnet import GFNet, GFNetPyramid

STEPS = 4
GLOBAL_BATCH = 8
# the reference FFT backend: the comparison is then of data parallelism alone
BACKEND = {'filter_backend': 'fft'}


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == 'iso':
        return GFNet(img_size=32, patch_size=8, embed_dim=32, depth=2, num_classes=10, **BACKEND)
    return GFNetPyramid(img_size=64, patch_size=4, embed_dim=(8, 16, 16, 32), depth=(1, 1, 1, 1), num_classes=10,
                        **BACKEND)


def batches(kind: str) -> list:
    g = torch.Generator().manual_seed(1)
    size = 32 if kind == 'iso' else 64
    return [(torch.randn(GLOBAL_BATCH, 3, size, size, generator=g), torch.randint(0, 10, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


def train(model: nn.Module, kind: str, shard: Optional[Callable] = None) -> nn.Module:
    """SGD with momentum and weight decay on the global batches, or on this rank's share of each (`shard`)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    for x, y in batches(kind):
        if shard is not None:
            x, y = shard(x), shard(y)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()  # a mean over the local batch: DDP's average gives the global one
        opt.step()
    return model


def main(modes: str, out: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    def shard(t: torch.Tensor) -> torch.Tensor:
        return t.chunk(world)[rank]

    for mode in modes.split(','):
        weights = {}
        for kind in ('iso', 'pyr'):
            model = build(kind)
            if mode == 'ddp':
                state = train(nn.parallel.DistributedDataParallel(model), kind, shard).module.state_dict()
            else:  # FSDP2: each block its own shard group, then the rest, as its docs recommend
                from torch.distributed.fsdp import fully_shard
                for module in model.modules():
                    if type(module).__name__ == 'Block':
                        fully_shard(module)
                fully_shard(model)
                state = {k: v.full_tensor() for k, v in train(model, kind, shard).state_dict().items()}
            weights.update({f'{kind}.{k}': v.detach().contiguous() for k, v in state.items()})
        save_file(weights, f'{out}/{mode}.rank{rank}.safetensors')
    dist.destroy_process_group()


if __name__ == '__main__':
    main(*sys.argv[1:])
