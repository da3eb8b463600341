"""A Qwen3 of a few thousand parameters, for tests that check losses and steps by hand."""

from transformers import Qwen3Config, Qwen3ForCausalLM


def micro_model(vocab_size: int, hidden: int = 16, layers: int = 1) -> Qwen3ForCausalLM:
    """``layers`` decoder layers ``hidden`` wide, two heads of ``hidden // 2``, tied embeddings;
    initialised from torch's current random state."""
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config)
