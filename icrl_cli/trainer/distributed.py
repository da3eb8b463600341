"""Many processes through ``torchrun``: queries sharded by rank, the update under FSDP2.

``torchrun --nproc-per-node N -m icrl_cli train …`` starts N ranks (and ``--nnodes`` more
machines). Every rank draws the same queries and plays its own share of them, whole (a query's
G sessions and their critiques never straddle ranks, so advantages are normalised exactly as
in one process), with a full copy of the weights for sampling. The update runs on a second
copy, sharded with PyTorch FSDP2 (``fully_shard``, one unit per decoder layer), its loss
normalised over every rank's samples, so N ranks take the step one process would take on all
the samples. After the step the sampling copy receives the new weights. Rank 0 alone writes
the run directory. NCCL on GPUs; gloo on CPUs, which is how the tests run it.
"""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from transformers import PreTrainedModel

from icrl_cli.trainer.logprobs import ResponseScorer

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks; ``size`` 1 is a plain single-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``, drawn alike on every rank: every size-th item."""
        return list(items[self.rank :: self.size])

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def max(self, value: int) -> int:
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def gather(self, items: list[T]) -> list[T]:
        """Every rank's ``items``, rank by rank, on every rank."""
        if self.size == 1:
            return items
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def _device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo, CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup() -> World:
    """The world ``torchrun`` describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), its
    process group joined (NCCL where CUDA is, else gloo) and, on GPUs, this rank's device made
    current; a plain process is a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return world


def teardown(world: World) -> None:
    """Leave the process group together: a rank that destroys it and exits while another is
    still writing (rank 0 saves last) can abort in gloo's teardown. The wait is bounded, so a
    rank whose peer died still leaves."""
    if world.size > 1 and dist.is_initialized():
        try:
            if dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(minutes=2))
            else:
                dist.barrier()
        except RuntimeError:
            pass  # a peer is gone; nothing is left to wait for
        dist.destroy_process_group()


def shard_for_update(
    model: PreTrainedModel, compute_dtype: torch.dtype = torch.float32
) -> ResponseScorer:
    """A copy of ``model`` (float32 masters) for the update, sharded over the ranks with
    ``fully_shard``: each decoder layer its own unit, the rest (embeddings, tied head, final
    norm) the root. Below float32, parameters are gathered in ``compute_dtype`` for the forward
    and gradients reduced in float32 (FSDP2's ``MixedPrecisionPolicy``)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mixed = {}
    if compute_dtype != torch.float32:
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        mixed = {"mp_policy": policy}
    scorer = ResponseScorer(copy.deepcopy(model))
    for layer in scorer.model.get_decoder().layers:
        fully_shard(layer, **mixed)
    fully_shard(scorer, **mixed)
    return scorer


def full_state(scorer: ResponseScorer) -> dict[str, torch.Tensor]:
    """The trained weights, whole, on every rank (a collective: every rank calls it), under the
    model's own parameter names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(scorer, options=StateDictOptions(full_state_dict=True))
    return {name.removeprefix("model."): tensor for name, tensor in state.items()}


def copy_weights(trained: ResponseScorer | PreTrainedModel, model: PreTrainedModel) -> None:
    """Give the sampling copy ``model`` the trained weights, cast to its dtype (for a sharded
    ``trained`` a collective: every rank calls it)."""
    state = full_state(trained) if isinstance(trained, ResponseScorer) else trained.state_dict()
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(model._tied_weights_keys or ()) if hasattr(model, "_tied_weights_keys") else set()
    if unexpected or set(missing) - tied:  # a bug, not a user error
        raise RuntimeError(f"weights did not match: missing {missing}, unexpected {unexpected}")


def optimizer_state(scorer: ResponseScorer, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state, whole, on CPU (a collective; rank 0 saves it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(scorer, optimizer, options=options)


def load_optimizer_state(
    scorer: ResponseScorer, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Restore a saved ``optimizer_state`` into the sharded optimizer (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(scorer, optimizer, optim_state_dict=state, options=options)
