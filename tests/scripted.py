"""Stand-ins for tests: scripted generation backends that answer without a model, the tiny
model's prompts, and the command line run in-process."""

from typer.testing import CliRunner

from icrl_cli.app import app
from icrl_cli.generation import Generation
from icrl_cli.rollout.prompts import Prompts
from icrl_cli.tiny import TINY_PROMPTS

PROMPTS = Prompts(**TINY_PROMPTS)
runner = CliRunner()


class ScriptedBackend:
    """Answers each prompt with ``script(user_message)`` (log-prob −1 a token). With the tiny
    prompts a critic's message holds '?', a revision's '|', a first attempt's neither."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.calls = tokenizer, script, []

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
        self.calls.append([self.tokenizer.decode(p) for p in prompts])
        outputs = []
        for p in prompts:
            user = self.tokenizer.decode(p).split("<|user|>")[1].split("<|end|>")[0]
            text = self.script(user)
            ids = self.tokenizer.encode(text, add_special_tokens=False) + [
                self.tokenizer.eos_token_id
            ]
            outputs.append(Generation(ids, [-1.0] * len(ids), "stop"))
        return outputs

    def sleep(self):
        return None

    def sync_weights(self, weights):
        return None


class QueueBackend:
    """Answers the i-th generate call with the i-th scripted list of outcomes: True is the task's
    answer, False a wrong one; it counts the prompts it was sent."""

    def __init__(self, tokenizer, tasks, script):
        self.tokenizer, self.script, self.prompts = tokenizer, list(script), 0
        self.answers = {t.prompt: t.answer for t in tasks}

    def outcomes(self, n):
        assert len(self.script[0]) == n
        return self.script.pop(0)

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
        outcomes = self.outcomes(len(prompts))
        self.prompts += len(prompts)
        outputs = []
        for prompt, right in zip(prompts, outcomes, strict=True):
            task = self.tokenizer.decode(prompt).split("<|user|>")[1].split("|")[0]
            task = task.removesuffix("<")  # the end of a first attempt's user turn
            text = f"\\boxed{{{self.answers[task] if right else -1}}}"
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            outputs.append(
                Generation(ids + [self.tokenizer.eos_token_id], [-1.0] * (len(ids) + 1), "stop")
            )
        return outputs

    def sleep(self):
        return None

    def sync_weights(self, weights):
        return None


def icrl(command: str, *paths):
    """Run `icrl COMMAND` (words split on spaces) with ``paths`` appended."""
    return runner.invoke(app, command.split() + [str(p) for p in paths])
