"""The parts DDP is built from, each against what one process computes: the global-batch sharding of
the loaders, the evaluation blocks, the gathered feature cache and the synced BatchNorm (forward,
gradients and running statistics, in two gloo processes)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from mae.data import make_loader, rank_range
from mae.evaluate.linprobe import SyncedBatchNorm1d, gather_blocks
from mae.evaluate.loop import per_rank_batch
from mae.train.runtime import DistInfo


def indices(loader) -> list[list[int]]:
    return [batch[0].tolist() for batch in loader]


def test_ranks_load_the_global_batches_of_one_process():
    data = TensorDataset(torch.arange(103))
    single = indices(make_loader(data, 12, True, seed=3, epoch=5, drop_last=True))
    shares = [
        indices(make_loader(data, 3, True, seed=3, epoch=5, drop_last=True, rank=r, world_size=4))
        for r in range(4)
    ]
    assert all(len(share) == len(single) == 103 // 12 for share in shares)
    for step, batch in enumerate(single):  # rank r holds the r-th quarter of each global batch
        assert [i for share in shares for i in share[step]] == batch
    again = make_loader(data, 3, True, seed=3, epoch=5, drop_last=True, rank=2, world_size=4)
    assert indices(again) == shares[2]  # a pure function of (seed, epoch, rank)
    other = make_loader(data, 3, True, seed=3, epoch=6, drop_last=True, rank=2, world_size=4)
    assert indices(other) != shares[2]
    with pytest.raises(ValueError, match="drop_last"):
        make_loader(data, 3, True, seed=3, epoch=5, rank=0, world_size=4)


def test_evaluation_blocks_cover_every_image_once():
    for n, world in ((10, 3), (7, 4), (2, 4), (0, 2), (9, 1)):
        blocks = [rank_range(n, r, world) for r in range(world)]
        assert [i for block in blocks for i in block] == list(range(n))


def test_global_batches_must_split_evenly():
    assert per_rank_batch("finetune", 128, 4) == 32
    with pytest.raises(ValueError, match="finetune.batch_size 100 .* multiple of the 8 processes"):
        per_rank_batch("finetune", 100, 8)
    with pytest.raises(ValueError, match="an even multiple"):
        per_rank_batch("finetune", 96, 32, even=True)  # Mixup on shares of 3


def _two_ranks(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    torch.manual_seed(0)
    x = torch.randn(12, 5, dtype=torch.float64) * 3 + 1  # the global batch: 6 rows per rank
    weights = torch.randn(12, 5, dtype=torch.float64)
    info = DistInfo(rank, 2, 0)
    mine = x[rank_range(12, rank, 2).start : rank_range(12, rank, 2).stop]
    gathered = gather_blocks(mine.clone(), 12, torch.device("cpu"), info)

    bn = SyncedBatchNorm1d(5, eps=1e-6, momentum=0.3).double()
    inputs = mine.clone().requires_grad_(True)
    out = bn(inputs)
    (out * weights[rank * 6 : rank * 6 + 6]).sum().backward()
    grads = [inputs.grad.clone(), bn.weight.grad.clone(), bn.bias.grad.clone()]
    for grad in grads[1:]:  # as DDP would: the parameters' gradients summed over ranks
        dist.all_reduce(grad)
    found = (gathered, out.detach(), grads, bn.running_mean, bn.running_var)
    torch.save(found, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: a minute on a busy machine
def test_synced_batchnorm_and_gathered_features_match_one_process(tmp_path):
    context = mp.get_context("spawn")
    procs = [context.Process(target=_two_ranks, args=(r, str(tmp_path))) for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=180)
        assert proc.exitcode == 0
    got = {rank: torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)}

    torch.manual_seed(0)
    x = torch.randn(12, 5, dtype=torch.float64) * 3 + 1
    weights = torch.randn(12, 5, dtype=torch.float64)
    bn = nn.BatchNorm1d(5, eps=1e-6, momentum=0.3).double()
    inputs = x.clone().requires_grad_(True)
    out = bn(inputs)
    (out * weights).sum().backward()
    for rank in (0, 1):
        gathered, rank_out, grads, running_mean, running_var = got[rank]
        part = slice(rank * 6, rank * 6 + 6)
        assert torch.equal(gathered, x)  # every rank holds every row, in order
        torch.testing.assert_close(rank_out, out.detach()[part])
        torch.testing.assert_close(grads[0], inputs.grad[part])  # through the all-reduce
        torch.testing.assert_close(grads[1], bn.weight.grad)
        torch.testing.assert_close(grads[2], bn.bias.grad)
        torch.testing.assert_close(running_mean, bn.running_mean)
        torch.testing.assert_close(running_var, bn.running_var)  # unbiased, as BatchNorm's
