"""The assembly point: the critic a spec names, built on the policy's backend or a frozen
model's."""

from scripted import PROMPTS
from session_settings import session_settings

from icrl_cli.components import Policy, build_critic
from icrl_cli.config import resolve
from icrl_cli.generation.hf import HFBackend
from icrl_cli.rollout.critics import ModelCritic, RuleCritic


def test_critic_switch_builds_the_right_critic(tiny_dir, random_tiny):
    model, tokenizer = random_tiny
    backend = HFBackend(model, tokenizer)
    settings = session_settings(sessions_per_query=2, max_rounds=2)
    built = {}
    for spec in ("self", "rule", str(tiny_dir)):
        config = resolve("tiny-math", [f'algo.critic="{spec}"'])
        built[spec] = build_critic(config, Policy(model, tokenizer, backend, PROMPTS, settings))
    assert isinstance(built["self"], ModelCritic) and built["self"].backend is backend
    assert built["self"].trainable
    assert isinstance(built["rule"], RuleCritic)
    frozen = built[str(tiny_dir)]
    assert isinstance(frozen, ModelCritic) and not frozen.trainable
    assert frozen.backend.model is not model
    grpo = resolve("tiny-math", ['algo.name="grpo"'])
    assert build_critic(grpo, Policy(model, tokenizer, backend, PROMPTS, settings)) is None
