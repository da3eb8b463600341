"""The one place that turns a RunConfig into the parts of a run: the environment, the model and
its tokenizer (embedded names built here), the generation backend, the critic, the session
settings, and for training the trainee the step works on.

`icrl train`, `eval`, `critique-compare`, `rollout`, `serve` and `bench/` all build through it;
nothing below it reaches up to borrow a loader.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import environments
from environments import Environment
from icrl_cli import adapters, models, tiny
from icrl_cli.config import ConfigError, GenerationConfig, RunConfig, to_toml
from icrl_cli.generation import GenerationBackend
from icrl_cli.generation.hf import HFBackend, stop_token_ids
from icrl_cli.generation.vllm_engine import EngineSettings, VLLMBackend, VLLMUnavailable
from icrl_cli.models import ModelLoadError
from icrl_cli.rollout.critics import (
    SPEC_FORMS,
    Critic,
    CriticSpec,
    ExpertCritic,
    ModelCritic,
    RuleCritic,
    connect_http_critic,
    parse_critic_spec,
)
from icrl_cli.rollout.prompts import Prompts
from icrl_cli.rollout.settings import SessionSettings
from icrl_cli.trainer import checkpoints, distributed, loop
from icrl_cli.trainer.step import QuerySampler, Trainee, push_weights


def resolve_model_name(name: str) -> str:
    """An embedded name ('tiny', 'tiny-household') → its cached directory, built on first use;
    anything else as ``models.resolve_model_name`` reads it."""
    if name in tiny.EMBEDDED_NAMES:
        return str(tiny.tiny_model_dir(name))
    return models.resolve_model_name(name)


def load_model(
    name: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model on ``device`` in ``dtype`` plus its tokenizer, by any name a user may type."""
    return models.load_model(resolve_model_name(name), device, dtype, trust_remote_code)


def make_environment(name: str, data: str | None, options: dict[str, Any]) -> Environment:
    """The environment ``name``; ``data`` is passed only when chosen (not every one takes it)."""
    chosen = {"data": data} if data is not None else {}
    return environments.make(name, **chosen, **options)


def environment(config: RunConfig) -> Environment:
    return make_environment(config.env.name, config.env.data, config.env.options)


def make_backend(
    generation: GenerationConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    trust_remote_code: bool = False,
) -> GenerationBackend:
    """The sampler ``generation.backend`` names, over ``model``'s weights: the model itself
    (hf), or a vLLM engine loaded from where ``model`` was loaded from, in its dtype."""
    if generation.backend == "hf":
        return HFBackend(model, tokenizer, generation.batch_size)
    settings = EngineSettings(
        model=model.name_or_path,
        dtype=model.dtype,
        max_model_len=generation.context_tokens,
        gpu_memory_utilization=generation.gpu_memory_utilization,
        kv_cache_gib=generation.kv_cache_gib,
        enforce_eager=generation.enforce_eager,
        enable_prefix_caching=generation.enable_prefix_caching,
        max_num_seqs=generation.max_num_seqs,
        sleep_mode=generation.sleep_mode,
        trust_remote_code=trust_remote_code,
    )
    try:
        return VLLMBackend(settings, stop_token_ids(model, tokenizer))
    except VLLMUnavailable as err:
        raise ConfigError(str(err)) from None


@dataclass
class Policy:
    """The model that is trained or measured, with what samples from it and how."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    backend: GenerationBackend
    prompts: Prompts
    settings: SessionSettings


def load_policy(config: RunConfig, source: str | None = None) -> Policy:
    """``config.model`` (or the weights in ``source``, a checkpoint of it) ready to sample from,
    with its prompts and ``config``'s session settings."""
    spec = config.model
    model, tokenizer = load_model(
        source or spec.name, spec.device, spec.dtype, spec.trust_remote_code
    )
    return Policy(
        model,
        tokenizer,
        make_backend(config.generation, model, tokenizer, spec.trust_remote_code),
        Prompts.resolve(config.prompts.model_dump(), resolve_model_name(spec.name)),
        SessionSettings.from_config(config, getattr(model.config, "max_position_embeddings", None)),
    )


def build_critic(
    config: RunConfig,
    policy: Policy,
    spec: CriticSpec | None = None,
    settings: SessionSettings | None = None,
) -> Critic | None:
    """None for GRPO; otherwise the critic ``spec`` names (by default ``algo.critic``). `self`
    critiques with the policy (trained when ``algo.train_critic``); a server critic uses the
    policy's prompt templates; a frozen model is loaded like the policy, with its own shipped
    prompts under the run's overrides."""
    if config.algo.name == "grpo":
        return None
    spec = spec or parse_critic_spec(config.algo.critic)
    settings = settings or policy.settings
    if spec.kind == "self":
        trainable = config.algo.train_critic
        return ModelCritic(policy.backend, policy.tokenizer, policy.prompts, settings, trainable)
    if spec.kind == "rule":
        return RuleCritic(policy.prompts)
    if spec.kind == "expert":
        return ExpertCritic(policy.prompts, spec.leak)
    if spec.kind == "http":
        return connect_http_critic(spec, policy.prompts, settings)
    assert spec.model is not None
    try:
        model, tokenizer = load_model(
            spec.model, config.model.device, config.model.dtype, config.model.trust_remote_code
        )
    except ModelLoadError as err:
        raise ModelLoadError(f"critic '{spec.text}': {err} (a critic is {SPEC_FORMS})") from None
    model.eval().requires_grad_(False)
    prompts = Prompts.resolve(config.prompts.model_dump(), resolve_model_name(spec.model))
    backend = make_backend(config.generation, model, tokenizer, config.model.trust_remote_code)
    return ModelCritic(backend, tokenizer, prompts, settings, trainable=False)


def trainee(
    config: RunConfig,
    env: Environment,
    policy: Policy,
    world: distributed.World | None = None,
    train: bool = True,
    source: str | None = None,
) -> Trainee:
    """What a step works on: ``policy`` and its critic, and with ``train`` the module the
    optimizer updates (``trained_module``), the KL term's reference model and the optimizer."""
    world = world or distributed.World()
    model, trained, ref_model, optimizer = policy.model, None, None, None
    if train:
        spec = config.model
        trained = trained_module(config, policy.model, world, source)
        if spec.lora is not None and source:  # a resumed run's adapters, before the first rollout
            push_weights(trained, policy.model, policy.backend)
        if config.algo.kl_coef > 0:
            ref_model, _ = load_model(spec.name, spec.device, spec.dtype, spec.trust_remote_code)
            ref_model.eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(
            [p for p in trained.parameters() if p.requires_grad],
            lr=config.train.lr,
            betas=config.train.betas,
            weight_decay=config.train.weight_decay,
        )
    return Trainee(
        config,
        env,
        model,
        policy.tokenizer,
        policy.backend,
        policy.prompts,
        policy.settings,
        critic=build_critic(config, policy),
        trained=trained,
        ref_model=ref_model,
        optimizer=optimizer,
        world=world,
        final_dtype=final_dtype(config, model.device) if train else None,
    )


def final_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """What ``final/`` is saved in: ``model.dtype`` when given, else the model's own."""
    spec = config.model
    if spec.dtype != "auto":
        return models.pick_dtype(spec.dtype, device)
    return models.saved_dtype(resolve_model_name(spec.name), spec.trust_remote_code)


def trained_module(
    config: RunConfig, model: PreTrainedModel, world: distributed.World, source: str | None
) -> torch.nn.Module:
    """The weights the optimizer updates, float32 masters: ``model`` itself when it is float32,
    else a float32 copy loaded from ``source`` (or the model's name) beside it, which samples
    in the compute dtype; with ``model.lora``, adapters on that base (the base from the model's
    name, the adapters from ``source``'s adapter/ when resuming); under torchrun an
    FSDP2-sharded copy computing in the sampler's dtype."""
    spec = config.model
    if model.dtype == torch.float16:
        raise ConfigError(
            "model.dtype = 'float16' trains without a loss scaler, which is not built; "
            "train in bfloat16 or float32"
        )
    if spec.lora is not None and world.size > 1:
        raise ConfigError(
            "model.lora under torchrun is not built yet; train adapters in one process"
        )
    base = None if spec.lora is not None else source
    trained = model
    if model.dtype != torch.float32:
        trained, _ = load_model(base or spec.name, spec.device, "float32", spec.trust_remote_code)
    if config.train.gradient_checkpointing:
        models.enable_activation_checkpointing(trained)
    if spec.lora is not None:
        saved = Path(source) / adapters.ADAPTER_DIR if source else None
        with torch.random.fork_rng(devices=[]):  # the adapters' init leaves sampling's draws alone
            trained = adapters.attach(trained, spec.lora, saved)
    if world.size > 1:
        trained = distributed.shard_for_update(trained, compute_dtype=model.dtype)
    return trained


def train(
    config: RunConfig, run_dir: Path, resume: bool, console: Console, overwrite: bool = False
) -> Path | None:
    """Run (or continue) training into ``run_dir``; returns the path of ``final/``, or None when
    SIGTERM or SIGINT stopped it after a checkpointed step (it says how to continue). Under
    ``torchrun`` every rank runs this (see ``trainer.distributed``); rank 0 writes."""
    world = distributed.setup()
    try:
        return train_on(world, config, run_dir, resume, console, overwrite)
    except loop.Interrupted as stopped:
        if world.main:
            console.print(
                f"stopped by {stopped.signal_name} after step {stopped.step}, checkpointed; "
                f"continue with: icrl train --resume {run_dir}",
                soft_wrap=True,
                highlight=False,
            )
        return None
    finally:
        distributed.teardown(world)


def train_on(
    world: distributed.World,
    config: RunConfig,
    run_dir: Path,
    resume: bool,
    console: Console,
    overwrite: bool = False,
) -> Path:
    """``train`` as this rank of ``world``. A fresh run never mixes with a run already in
    ``run_dir``: that is refused, unless ``overwrite`` clears it first."""
    if config.generation.backend == "vllm" and world.size > 1:
        raise ConfigError(
            "generation.backend = 'vllm' under torchrun is not built yet; train with vLLM in "
            "one process, or with the hf backend under torchrun"
        )
    if config.train.queries_per_step % world.size:
        raise ConfigError(
            f"train.queries_per_step ({config.train.queries_per_step}) must be a multiple "
            f"of the number of ranks ({world.size}): each rank plays whole queries"
        )
    env = environment(config)
    train_tasks = list(env.tasks(config.env.train_split))
    run_dir = world.broadcast(run_dir)  # a default name carries rank 0's clock
    loop.seed_everything(config.train.seed + world.rank)  # ranks sample their own noise
    if world.main:
        prepare_run_dir(run_dir, resume, overwrite)
        (run_dir / "config.toml").write_text(to_toml(config))
    # (An embedded model that is not built yet is built by one rank: its cache holds a lock.)
    checkpoint = None
    if resume:
        if world.main:
            checkpoints.remove_partials(run_dir)
        world.barrier()

        def report(line: str) -> None:
            if world.main:
                console.print(line, soft_wrap=True, highlight=False)

        checkpoint = checkpoints.latest_checkpoint(run_dir, report=report)
    if resume and checkpoint is None and world.main:
        console.print(f"no checkpoint in {run_dir}; starting from step 0", soft_wrap=True)
    source = str(checkpoint) if checkpoint else None
    # With adapters the base weights never change: they come from the model, not the checkpoint.
    policy = load_policy(config, None if config.model.lora else source)
    parts = trainee(config, env, policy, world, source=source)
    sampler = QuerySampler(train_tasks, config.train.seed)
    return loop.fit(parts, sampler, run_dir, checkpoint, console)


# What a run writes into its directory; a fresh run refuses to mix with any of it.
RUN_ENTRIES = (
    "config.toml",
    "metrics.jsonl",
    "checkpoints",
    "samples",
    "final",
    "tensorboard",
    "wandb",
    "wandb_run_id",
)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """``run_dir`` ready for this run: created; for a fresh run, empty of any earlier run's
    files (refused unless ``overwrite``)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} is a file")
    found = [name for name in RUN_ENTRIES if (run_dir / name).exists()]
    if found and not resume:
        if not overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run ({', '.join(found)}); continue it with "
                f"--resume {run_dir}, or start over with --overwrite"
            )
        for name in found:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create run directory {run_dir}: {err.strerror}") from None
