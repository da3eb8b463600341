"""One ICRL update on a fixed batch, in one process or, under ``torchrun``, over several ranks
(each playing its share of the queries); rank 0 saves the updated weights and the step's
statistics to the path it is given. ``test_distributed.py`` compares the two."""

import random
import sys

import torch
from micro_model import micro_model

from icrl_cli.config import resolve
from icrl_cli.rollout.samples import Sample
from icrl_cli.trainer import distributed
from icrl_cli.trainer.policy import policy_update
from icrl_cli.trainer.step import assign_advantages

VOCAB = 40


def batch() -> list[Sample]:
    """Four queries of unequal size: a solver group, revisions under a longer (critique)
    context, and critiques, with rewards that differ inside each group."""
    draw = random.Random(7)
    samples = []
    for query in range(4):
        prompt = [draw.randrange(2, VOCAB) for _ in range(3 + query)]
        for session in range(4 if query == 0 else 2):
            for round_, role in ((1, "solver"), (2, "solver"), (1, "critic")):
                behavior = prompt + [draw.randrange(2, VOCAB) for _ in range(2)] * (round_ > 1)
                n = draw.randrange(2, 7)
                samples.append(
                    Sample(
                        f"q{query}",
                        session,
                        round_,
                        role,
                        prompt,
                        behavior,
                        [draw.randrange(2, VOCAB) for _ in range(n)],
                        [draw.choice((0, 1, 1)) for _ in range(n - 1)] + [1],
                        [-draw.uniform(2.5, 4.5) for _ in range(n)],
                        reward=float(draw.random() < 0.5) + session * 0.1,
                    )
                )
    return samples


def main(out: str) -> None:
    world = distributed.setup()
    config = resolve("tiny-math", ["train.micro_batch_size=3", "train.micro_batch_tokens=40"])
    torch.manual_seed(0)
    model = micro_model(VOCAB, hidden=32, layers=2)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    queries = world.shard([f"q{i}" for i in range(4)])
    samples = [s for s in batch() if s.query_id in queries]
    assign_advantages(samples, config.algo)  # within whole queries: as in one process
    trained = distributed.shard_for_update(model) if world.size > 1 else model
    # Plain SGD: the weights move by the gradient itself, so its scale is checked too.
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    stats = policy_update(trained, None, optimizer, samples, config, 0, world)
    if world.size > 1:
        distributed.copy_weights(trained, model)
    if world.main:
        saved = {"weights": model.state_dict(), "initial": initial, "rows": len(samples)}
        torch.save({**saved, "stats": vars(stats)}, out)
    distributed.teardown(world)


if __name__ == "__main__":
    main(sys.argv[1])
