"""The critic's efficiency at tiny scale: a critic learned by ICRL against frozen critics.

Two comparisons with ``icrl critique-compare --preset tiny-math``, ungated (every attempt is
critiqued, so a critique can break a success as well as fix a failure), on the first
``--limit`` held-out problems, the same round-1 attempts for every critic:

* the **solver after ICRL** (a ``bench/reproduce.py`` run's ``final/``), critiqued by its own
  learned critic, by the tiny model before RL, by a larger tiny model (8 layers × 512, about
  25M parameters, warm-started the same way: ``icrl_cli.tiny.math_build.build``, built here
  on first use), by ``smollm2-135m`` (a pretrained 135M model; needs the ``smollm2`` extra),
  and by the expert and rule critics, which need no model;
* the **solver before RL** (``tiny``) with the same critics.

Per critic: fix rate (failed → solved), break rate (solved → failed), Δ success, critique
tokens, and fix rate per 100 critique tokens. ``results.md`` and ``results.json`` go to
``--out``.

    python bench/critics.py --learned bench/out/reproduce/tiny-math/icrl/seed-0/final
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

BIG = {"layers": 8, "hidden": 512}


def parameters(model_dir: Path) -> int:
    """Parameters stored in a model directory's safetensors files (tied weights once)."""
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                total += math.prod(f.get_slice(name).get_shape())
    return total


def big_critic(out: Path) -> Path:
    from icrl_cli.tiny.math_build import build

    target = out / f"tiny-{BIG['layers']}x{BIG['hidden']}"
    if not (target / "model.safetensors").exists():
        print(f"building the {BIG['layers']} × {BIG['hidden']} critic into {target}", flush=True)
        build(target, **BIG)
    return target


def smollm2() -> Path | None:
    """The smollm2-135m directory, or None where the ``smollm2`` extra is not installed."""
    from icrl_cli.models import ModelLoadError
    from icrl_cli.tiny import tiny_model_dir

    try:
        return tiny_model_dir("smollm2-135m")
    except (ModelLoadError, ImportError) as err:
        print(f"smollm2-135m left out: {err}", flush=True)
        return None


def compare(solver: str, critics: dict[str, str], limit: int, output: Path, threads: int) -> dict:
    if not output.exists():
        command = [sys.executable, "-m", "icrl_cli", "critique-compare", "--preset", "tiny-math"]
        command += ["--model", solver, "--gate", "ungated", "--limit", str(limit)]
        for name, spec in critics.items():
            command += ["--critic", f"{name}={spec}"]
        command += ["--output", str(output)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        subprocess.run(command, check=True, env=env)
    return json.loads(output.read_text())


def cell(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(title: str, result: dict, sizes: dict[str, int | None]) -> list[str]:
    first = result["critics"][0]["success_round1"]
    lines = [
        f"#### {title}: round-1 success {first:.3f} on {result['n']} problems, ungated",
        "",
        "| critic | parameters | fix rate | break rate | Δ success | critique tokens "
        "| fix rate / 100 tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result["critics"]:
        size = sizes.get(c["name"])
        lines.append(
            f"| {c['name']} | {'–' if size is None else f'{size / 1e6:.1f}M'} "
            f"| {cell(c['fix_rate'])} | {cell(c['break_rate'])} | {c['delta_success']:+.3f} "
            f"| {cell(c['critique_tokens_mean'], 1)} | {cell(c['fix_rate_per_100_tokens'], 2)} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learned", type=Path, required=True, help="An ICRL run's final/.")
    parser.add_argument("--limit", type=int, default=500, help="Held-out problems.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--out", type=Path, default=Path("bench/out/critics"))
    parser.add_argument(
        "--without-big",
        action="store_true",
        help="Leave out the 8 × 512 critic (its warm-start takes an hour or more on 2 cores).",
    )
    args = parser.parse_args()
    if not (args.learned / "config.json").exists():
        sys.exit(f"{args.learned} is not a model directory (an ICRL run's final/)")
    from icrl_cli.tiny import tiny_model_dir

    args.out.mkdir(parents=True, exist_ok=True)
    critics = {"learned (ICRL)": str(args.learned), "tiny (before RL)": "tiny"}
    sizes: dict[str, int | None] = {
        "learned (ICRL)": parameters(args.learned),
        "tiny (before RL)": parameters(tiny_model_dir("tiny")),
    }
    if not args.without_big:
        big = big_critic(args.out)
        critics["tiny 8x512"] = str(big)
        sizes["tiny 8x512"] = parameters(big)
    small = smollm2()
    if small is not None:
        critics["smollm2-135m"] = "smollm2-135m"
        sizes["smollm2-135m"] = parameters(small)
    critics |= {"expert": "expert", "rule": "rule"}
    after = compare(
        str(args.learned), critics, args.limit, args.out / "after-icrl.json", args.threads
    )
    before = compare("tiny", critics, args.limit, args.out / "before-rl.json", args.threads)
    lines = [
        *table(f"Solver after ICRL ({args.learned})", after, sizes),
        *table("Solver before RL (tiny)", before, sizes),
    ]
    (args.out / "results.md").write_text("\n".join(lines))
    (args.out / "results.json").write_text(
        json.dumps({"after_icrl": after, "before_rl": before, "parameters": sizes}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
