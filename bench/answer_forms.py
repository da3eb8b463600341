"""How tiny-math models answer critique-free: directly (the response starts with ``\\boxed``)
or by writing the running sums out, and how often each form is right.

The sessions are those of ``icrl rollout`` on the test split (the run's first-step sampler, 32
queries × 8 sessions, temperature 1), critique-free attempts only:

    python bench/answer_forms.py bench/out/reproduce-leaky/tiny-math/*/seed-*/final
"""

from __future__ import annotations

import argparse
import json


def forms(model: str, queries: int) -> dict[str, float | int]:
    from icrl_cli.config import resolve
    from icrl_cli.evaluation.dump import rollout

    config = resolve("tiny-math", [f"model.name='{model}'", "algo.name='grpo'"])
    attempts = [r.sample for r in rollout(config, queries, "test")]
    direct = [s for s in attempts if s["text"].startswith("\\boxed")]
    written = [s for s in attempts if not s["text"].startswith("\\boxed")]

    def success(samples: list[dict]) -> float | None:
        return sum(s["reward"] for s in samples) / len(samples) if samples else None

    return {
        "attempts": len(attempts),
        "direct_share": len(direct) / len(attempts),
        "success_direct": success(direct),
        "success_written": success(written),
        "success": success(attempts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="Model directories (a run's final/).")
    parser.add_argument("--queries", type=int, default=32)
    args = parser.parse_args()
    for model in args.models:
        print(json.dumps({"model": model, **forms(model, args.queries)}), flush=True)


if __name__ == "__main__":  # the math grader's worker process re-imports this file
    main()
