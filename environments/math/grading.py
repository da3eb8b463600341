"""Grade a completion's final answer against a gold answer, returning 1.0 or 0.0.

Plain numbers are compared in-process. Everything else goes to math-verify in a persistent worker
process: math-verify's own time-outs use ``signal.alarm`` (main thread only) and do not always fire
on huge powers, so the parent enforces a wall-clock limit and kills the worker when it is exceeded.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from multiprocessing.connection import Connection
from typing import Any

# Generous, because a fresh worker may also re-import the parent's ``__main__`` (spawn semantics).
STARTUP_TIMEOUT = 60.0
# Extra address space the worker may map once started; stops a runaway power from eating the host.
WORKER_MEMORY_BYTES = 4 << 30

_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_BOXED = re.compile(r"\\boxed\s*\{")
_MATH_DOLLAR = re.compile(r"(?<!\\)\$")  # a $ that opens math, not an escaped \$ (currency)
_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _braced(text: str, start: int) -> str | None:
    """The text from ``start`` up to the brace closing an already-opened group, or None."""
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # \{ and \} are literal braces in LaTeX, not grouping
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


def extract_answer(completion: str) -> tuple[str, bool] | None:
    """The final answer of ``completion`` and whether it came from ``\\boxed{}``; None if absent.

    The last ``\\boxed{...}`` with balanced braces wins; failing that, the last ``<answer>`` span.
    """
    for match in reversed(list(_BOXED.finditer(completion))):
        content = _braced(completion, match.end())
        if content is not None:
            return content.strip(), True
    spans = _ANSWER_SPAN.findall(completion)
    if spans:
        return spans[-1].strip(), False
    return None


def _plain_number(text: str) -> Decimal | None:
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    return Decimal(text.replace(",", ""))


def _wrap_gold(gold: str) -> str:
    # math-verify only reads LaTeX inside a math environment; bare MATH answers misparse.
    if "\\boxed" in gold or _MATH_DOLLAR.search(gold):
        return gold
    return "\\boxed{" + gold + "}"


# ---------------------------------------------------------------- worker process side


def _cap_memory(extra: int) -> None:
    try:
        import resource

        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
        current = int(fields["VmSize"].split()[0]) * 1024
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = current + extra
        if hard == resource.RLIM_INFINITY or limit < hard:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, OSError, KeyError, ValueError):
        pass  # not Linux: run without a cap rather than not at all


def _serve(conn: Connection, memory_bytes: int) -> None:
    """Worker loop: answer each ``(gold, prediction, boxed)`` request with 1.0 or 0.0."""
    _cap_memory(memory_bytes)
    import logging

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # It warns once that its own time-outs are off; the parent enforces them instead.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    both = [LatexExtractionConfig(), ExprExtractionConfig()]
    boxed_first = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    def check(gold: str, prediction: str, boxed: bool) -> float:
        gold_parsed = parse(_wrap_gold(gold), both, parsing_timeout=None)
        if not gold_parsed:
            return 0.0
        parsed = parse("\\boxed{" + prediction + "}", boxed_first, parsing_timeout=None)
        if not boxed:
            # An <answer> span may be prose ("so it is 5") or bare LaTeX; accept either reading.
            parsed = parsed + parse(prediction, both, parsing_timeout=None)
        if not parsed:
            return 0.0
        return 1.0 if verify(gold_parsed, parsed, timeout_seconds=None) else 0.0

    conn.send("ready")
    while True:
        try:
            gold, prediction, boxed = conn.recv()
        except (EOFError, OSError):
            return
        try:
            result = check(gold, prediction, boxed)
        except Exception:
            result = 0.0
        conn.send(result)


# ---------------------------------------------------------------- parent side


@contextlib.contextmanager
def _no_phantom_main_file() -> Iterator[None]:
    """A spawned child re-runs the parent's main script from ``__main__.__file__``; a script
    read from standard input (``<stdin>``) or some notebooks name a file that does not exist,
    and the child dies on it. While the worker starts, such a name is hidden (the worker needs
    nothing from the main script)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or os.path.isfile(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class _Worker:
    def __init__(self) -> None:
        # spawn: a forked child of a process running torch or threads can deadlock.
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve,
            args=(child, WORKER_MEMORY_BYTES),
            daemon=True,
            name="icrl-math-grader",
        )
        with _no_phantom_main_file():
            self.process.start()
        child.close()

    def wait_ready(self) -> None:
        """Block until the worker has imported math-verify; raise if it dies or hangs first."""
        try:
            started = self.conn.poll(STARTUP_TIMEOUT) and self.conn.recv() == "ready"
        except (EOFError, OSError):
            started = False
        if not started:
            self.kill()
            # Scoring every answer 0.0 would silently wreck training, so this one is loud.
            raise RuntimeError(
                f"the math grading worker did not start (exit code {self.process.exitcode}). "
                "It is a multiprocessing 'spawn' process, which re-imports the main script: "
                "guard the script's top-level code with `if __name__ == '__main__':`."
            )

    def kill(self) -> None:
        self.process.kill()
        self.process.join(1.0)
        self.conn.close()


_lock = threading.Lock()
_worker: _Worker | None = None
_timeouts = 0


def _forget_after_fork() -> None:
    # The worker is the parent's child; a forked copy must start its own, and never kill that one.
    global _lock, _worker
    _lock = threading.Lock()
    _worker = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _running_worker() -> _Worker:
    global _worker
    if _worker is None or not _worker.process.is_alive():
        if _worker is not None:
            _worker.kill()
        _worker = None
        fresh = _Worker()
        fresh.wait_ready()
        _worker = fresh
    return _worker


def _ask_worker(request: tuple[str, str, bool], timeout: float) -> float:
    global _worker, _timeouts
    with _lock:
        worker = _running_worker()
        try:
            worker.conn.send(request)
        except OSError:
            # It died while idle (e.g. killed from outside); nothing was graded, so start afresh.
            worker.kill()
            _worker = None
            worker = _running_worker()
            worker.conn.send(request)
        answered = False
        try:
            if worker.conn.poll(timeout):
                result: Any = worker.conn.recv()
                answered = True
                return 1.0 if result == 1.0 else 0.0
            _timeouts += 1
            return 0.0
        except (EOFError, OSError):
            return 0.0  # crashed mid-grade, e.g. out of memory
        finally:
            if not answered:
                # Timed out, crashed or interrupted: a late reply would be taken for the next one.
                worker.kill()
                _worker = None


def grade(completion: str, answer: str, timeout: float = 5.0) -> float:
    """1.0 if the final answer of ``completion`` equals ``answer`` (the gold), else 0.0.

    The final answer is the last ``\\boxed{...}`` or else the last ``<answer>...</answer>``; none
    gives 0.0. Two plain numbers (signs, decimals and thousands commas allowed) are compared
    exactly in-process. Anything else is checked by math-verify in a worker process; a check that
    takes longer than ``timeout`` seconds kills the worker (it restarts on the next call) and
    scores 0.0, as do a worker crash and a gold answer that math-verify cannot parse. Safe to
    call from any thread; concurrent callers take turns on the one worker. The first call after a
    (re)start also waits for the worker to import math-verify (about half a second, more if the
    main script is heavy: spawn re-imports it). A worker that cannot start raises RuntimeError.
    """
    found = extract_answer(completion)
    if found is None:
        return 0.0
    prediction, boxed = found
    if not prediction:
        return 0.0
    predicted_number, gold_number = _plain_number(prediction), _plain_number(answer)
    if predicted_number is not None and gold_number is not None:
        return 1.0 if predicted_number == gold_number else 0.0
    return _ask_worker((answer, prediction, boxed), timeout)


def timeouts() -> int:
    """How many grades in this process were cut off by the time limit (and scored 0.0)."""
    return _timeouts


def shutdown() -> None:
    """Stop the worker process now (it also stops with this process); the next grade restarts it."""
    global _worker
    with _lock:
        if _worker is not None:
            _worker.kill()
            _worker = None


def warm_up() -> None:
    """Start the worker now rather than in the first grade that needs it (e.g. before timing)."""
    _ask_worker(("1", "1", True), STARTUP_TIMEOUT)


__all__ = ["extract_answer", "grade", "shutdown", "timeouts", "warm_up"]
