"""Checkpoints and resume: model directories written atomically, the optimizer and every
rank's random state, and the trainer's own state (step, counters, the query sampler's place).

A checkpoint is ``checkpoints/step-N/``: a Hugging Face model directory plus ``optimizer.pt``,
``rng.pt`` and ``trainer_state.json``. It is filled under a hidden partial name and renamed,
so a kill never leaves a half-written checkpoint under its final name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from icrl_cli import adapters
from icrl_cli.rollout.prompts import PROMPTS_FILE, Prompts

CHECKPOINT_PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be, or must not be, loaded; the message is one line."""


def load_tensors(path: Path, map_location: torch.device | str | None = None) -> Any:
    """A ``.pt`` file of tensors and plain values (``weights_only``): loading a checkpoint never
    runs code that came with it, whoever wrote it."""
    try:
        with warnings.catch_warnings():  # (torch warns of a protocol it then refuses anyway)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's text (which goes on to suggest weights_only=False) keeps its finding in the
        # paragraphs between its first one and "Check the documentation".
        paragraphs = str(err).split("Check the documentation")[0].split("\n")[1:]
        text = " ".join(" ".join(paragraphs).split())
        reason = text.split("WeightsUnpickler error:")[-1].strip() or "unpickling refused"
        raise CheckpointError(
            f"{path}: refused to load; it holds more than tensors and plain values ({reason})"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint file ({err})") from None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Fill a hidden partial directory, then rename it: a crash never leaves a half-written
    directory under the final name (readers ignore names that start with a dot)."""
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        write(partial)
    except BaseException as err:
        # Nothing half-written stays behind; a full disk is said as such (torch's own writer
        # reports it as a RuntimeError about file positions).
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(err, RuntimeError) and _nearly_full(target.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from None
        raise
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    return target


def _nearly_full(directory: Path, margin: int = 64 * 2**20) -> bool:
    try:
        return shutil.disk_usage(directory).free < margin
    except OSError:
        return False


def write_model(
    path: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    state_dict: dict[str, torch.Tensor] | None = None,
    adapted: Any = None,
) -> None:
    """A Hugging Face model directory (``model``, or its architecture with ``state_dict``), plus
    the prompt templates it was trained with, so that `icrl eval` on it prompts the model the way
    training did, and with ``adapted`` its LoRA adapters in ``adapter/``."""
    model.save_pretrained(path, state_dict=state_dict)
    if adapted is not None:
        adapters.save_adapter(adapted, path)
    tokenizer.save_pretrained(path)
    _write_json(path / PROMPTS_FILE, prompts.to_json())


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Prompts,
    optimizer_state: dict[str, Any],
    rngs: list[dict[str, Any]],
    state: dict[str, Any],
    keep: int,
    weights: dict[str, torch.Tensor] | None = None,
    adapted: Any = None,
) -> Path:
    """``checkpoints/step-N``: the model (or its architecture with ``weights``), the optimizer
    state, each rank's random state (``rng.pt``: a list, rank by rank) and the trainer's,
    written atomically; the oldest beyond ``keep`` are removed."""

    def write(path: Path) -> None:
        write_model(path, model, tokenizer, prompts, weights, adapted)
        torch.save(optimizer_state, path / "optimizer.pt")
        torch.save(rngs, path / "rng.pt")
        _write_json(path / "trainer_state.json", {"step": step, **state})
        write_manifest(path)

    target = write_atomically(run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}", write)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial ones start with a dot and are ignored)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (a killed run's tail),
    and a last line a kill cut short."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a half-written line: nothing after it was written whole
        if step <= last_step:
            kept.append(line)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> None:
    """Every file's size and SHA-256, written last: a checkpoint whose files still match it
    was written whole and has not been damaged since."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in files
    }
    _write_json(directory / MANIFEST, entries)


def damage(checkpoint: Path) -> str | None:
    """What is wrong with ``checkpoint`` by its manifest (None: nothing). A checkpoint from
    before manifests is taken as it is."""
    manifest = checkpoint / MANIFEST
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return "its manifest is unreadable"
    for name, entry in entries.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, not {entry['bytes']}"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def latest_checkpoint(run_dir: Path, report: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that verifies; each newer one skipped is reported with why."""
    for checkpoint in reversed(list_checkpoints(run_dir)):
        problem = damage(checkpoint)
        if problem is None:
            return checkpoint
        report(f"skipping {checkpoint}: {problem}")
    return None


def remove_partials(run_dir: Path) -> None:
    """Half-written checkpoints a killed or failed write left behind."""
    for root in (run_dir, run_dir / "checkpoints"):
        if root.is_dir():
            for stale in root.glob(".*.partial"):
                shutil.rmtree(stale, ignore_errors=True)


def read_rng_states(checkpoint: Path) -> list[dict[str, Any]]:
    """Each rank's random state, rank by rank (a checkpoint from before ``rng.pt`` held one
    state per rank holds one)."""
    rngs = load_tensors(checkpoint / "rng.pt")
    return [rngs] if isinstance(rngs, dict) else rngs


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / "trainer_state.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable trainer state ({err})") from None
