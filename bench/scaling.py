"""How icrl's ``grpo`` step time grows with G, with the response length and with the model.

Three sweeps around one centre point (B = 16 queries, G = 8, 40 new tokens, the tiny
architecture: 4 layers, 256 wide), three points each:

* G (sessions per query): 4, 8, 16;
* max new tokens: 20, 40, 80;
* model size (layers × hidden size): 2 × 128, 4 × 256, 8 × 512 (heads of 64, intermediate
  3 × hidden, the tiny model's tokenizer).

Every point uses freshly initialised weights of its architecture, not the warm-started tiny
model: an untrained model almost never samples EOS, so every completion runs to the token limit
and the work per step depends only on the settings, not on what the policy has learnt. Each
point is one subprocess of ``bench/throughput.py``'s worker (the same step, timed the same
way: warm-up dropped, mean of the measured steps). Writes ``scaling.json`` and ``scaling.png``.

    python bench/scaling.py                       # 7 distinct points × (1 + 3) steps
    python bench/scaling.py --steps 5 --out bench/out
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from throughput import Settings, launch

CENTRE = {"group": 8, "max_new_tokens": 40, "size": (4, 256)}
SWEEPS: dict[str, list[Any]] = {
    "group": [4, 8, 16],
    "max_new_tokens": [20, 40, 80],
    "size": [(2, 128), (4, 256), (8, 512)],
}


def untrained_model(layers: int, hidden: int, root: Path) -> tuple[Path, int]:
    """A freshly initialised Qwen3 of this shape with the tiny model's tokenizer and prompts
    (built here, so the cached tiny model is not needed);
    returns its directory and parameter count."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from icrl_cli.rollout.prompts import PROMPTS_FILE
    from icrl_cli.tiny import TINY_PROMPTS, build_tokenizer

    tokenizer = build_tokenizer()
    target = root / f"qwen3-{layers}x{hidden}"
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(hidden // 128, 1),
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / PROMPTS_FILE).write_text(json.dumps(TINY_PROMPTS, indent=2) + "\n")
    return target, sum(p.numel() for p in model.parameters())


def measure(point: dict[str, Any], models: dict, steps: int, threads: int) -> dict[str, Any]:
    layers, hidden = point["size"]
    directory, params = models[(layers, hidden)]
    settings = Settings(
        group=point["group"],
        max_new_tokens=point["max_new_tokens"],
        steps=steps,
        threads=threads,
        model=str(directory),
    )
    result = launch("grpo", settings)
    rates = result.rates()
    return {
        "group": point["group"],
        "max_new_tokens": point["max_new_tokens"],
        "layers": layers,
        "hidden": hidden,
        "params": params,
        "step_s": rates["step_s"],
        "rollout_s": sum(result.phases["rollout_s"]) / len(result.step_s),
        "update_s": sum(result.phases["update_s"]) / len(result.step_s),
        "samples_per_step": sum(result.samples) / len(result.samples),
        "tokens_per_step": sum(result.tokens) / len(result.tokens),
        "tokens_per_s": rates["tokens_per_s"],
        "peak_rss_mb": result.peak_rss_mb,
    }


def label(sweep: str, value: Any, params: int | None = None) -> str:
    if sweep == "size":
        return f"{value[0]}×{value[1]} ({params / 1e6:.1f}M)"
    return str(value)


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"group": "G (B = 16)", "max_new_tokens": "max new tokens", "size": "layers × hidden"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=False)
    for ax, (sweep, rows) in zip(axes, results.items(), strict=True):
        ticks = [label(sweep, v, r["params"]) for v, r in zip(SWEEPS[sweep], rows, strict=True)]
        x = range(len(rows))
        ax.plot(x, [r["step_s"] for r in rows], marker="o", label="step")
        ax.plot(x, [r["rollout_s"] for r in rows], marker=".", ls="--", label="rollout")
        ax.plot(x, [r["update_s"] for r in rows], marker=".", ls=":", label="update")
        ax.set_xticks(list(x), ticks, fontsize=8)
        ax.set(xlabel=titles[sweep], ylabel="seconds per step", ylim=(0, None))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("icrl grpo step time (untrained weights: every completion hits the limit)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="Measured steps per point.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    model_root = args.out / "scaling-models"
    models = {size: untrained_model(*size, model_root) for size in SWEEPS["size"]}
    started = time.perf_counter()
    cache: dict[tuple, dict[str, Any]] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    for sweep, values in SWEEPS.items():
        results[sweep] = []
        for value in values:
            point = {**CENTRE, sweep: value}
            key = (point["group"], point["max_new_tokens"], point["size"])
            if key not in cache:
                cache[key] = measure(point, models, args.steps, args.threads)
                row = cache[key]
                print(
                    f"[{time.perf_counter() - started:5.0f} s] G={row['group']} "
                    f"T={row['max_new_tokens']} {row['layers']}×{row['hidden']}: "
                    f"{row['step_s']:.2f} s/step",
                    flush=True,
                )
            results[sweep].append(cache[key])
    (args.out / "scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "scaling.png")
    lines = [
        "| sweep | value | params | samples/step | tokens/step | step (s) | rollout (s) "
        "| update (s) | tokens/s | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sweep, rows in results.items():
        for value, r in zip(SWEEPS[sweep], rows, strict=True):
            lines.append(
                f"| {sweep} | {label(sweep, value, r['params'])} | {r['params'] / 1e6:.2f}M "
                f"| {r['samples_per_step']:.0f} | {r['tokens_per_step']:.0f} | {r['step_s']:.2f} "
                f"| {r['rollout_s']:.2f} | {r['update_s']:.2f} | {r['tokens_per_s']:.0f} "
                f"| {r['peak_rss_mb']:.0f} |"
            )
    print("\n".join(lines))
    print(f"wrote {args.out / 'scaling.png'}")


if __name__ == "__main__":
    main()
