"""Experiment trackers (``train.report_to``): TensorBoard and Weights & Biases receive every
step's metrics under metrics.jsonl's names, the resolved config once, and a table of sampled
sessions every ``train.samples_every`` steps. Rank 0 alone reports; a resumed run continues the
same TensorBoard log and the same W&B run, without repeating a step."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Protocol

from icrl_cli.config import ConfigError, RunConfig, to_toml
from icrl_cli.rollout.samples import Sample

SAMPLE_COLUMNS = [
    "query",
    "session",
    "round",
    "prompt",
    "critique",
    "response",
    "reward",
    "advantage",
    "calibration_weight_mean",
]
WANDB_ID_FILE = "wandb_run_id"


class Reporter(Protocol):
    def metrics(self, step: int, record: dict[str, Any]) -> None: ...

    def samples(self, step: int, rows: list[list[Any]]) -> None: ...

    def close(self) -> None: ...


def session_rows(samples: list[Sample]) -> list[list[Any]]:
    """One row a solver attempt: the task, the critique it read, what it wrote, its reward,
    advantage and (revisions) mean calibration weight."""
    return [
        [
            s.query_id,
            s.session,
            s.round,
            str(s.metadata.get("task", "")),
            s.metadata.get("critique") or "",
            s.text,
            s.reward,
            s.advantage,
            s.calibration_weight_mean,
        ]
        for s in samples
        if s.role == "solver"
    ]


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    """The record's numeric metrics (a None is a metric with nothing to measure this step)."""
    return {
        k: float(v)
        for k, v in record.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class TensorBoardReporter:
    """Scalars under the metric names, the config as text, the sessions as a markdown table.
    On resume, events after the checkpoint's step are purged (``purge_step``)."""

    def __init__(self, config: RunConfig, run_dir: Path, start_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.report_to 'tensorboard' needs the 'tensorboard' package: "
                "pip install -e '.[tracking]'"
            ) from None
        self.writer = SummaryWriter(
            str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )
        self.writer.add_text("config", f"```toml\n{to_toml(config)}\n```", start_step)

    def metrics(self, step: int, record: dict[str, Any]) -> None:
        for name, value in _numbers(record).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def samples(self, step: int, rows: list[list[Any]]) -> None:
        def cell(value: Any) -> str:
            return str(value).replace("|", "\\|").replace("\n", " ")[:500]

        lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text("samples", "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    """A W&B run in RUN/wandb, offline unless the user has a key or chose a mode; its id is kept
    in the run directory so that --resume continues it."""

    def __init__(self, config: RunConfig, run_dir: Path, start_step: int) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "train.report_to 'wandb' needs the 'wandb' package: pip install -e '.[tracking]'"
            ) from None
        self.wandb = wandb
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        (run_dir / "wandb").mkdir(exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "icrl"),
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=config.model_dump(mode="json"),
        )
        self.start_step = start_step

    def metrics(self, step: int, record: dict[str, Any]) -> None:
        if step > self.start_step:
            self.run.log(_numbers(record), step=step)

    def samples(self, step: int, rows: list[list[Any]]) -> None:
        table = self.wandb.Table(columns=SAMPLE_COLUMNS, data=rows)
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


REPORTERS = {"tensorboard": TensorBoardReporter, "wandb": WandbReporter}


def open_reporters(config: RunConfig, run_dir: Path, start_step: int) -> list[Reporter]:
    """The trackers ``train.report_to`` names ('none' names none)."""
    chosen = dict.fromkeys(n for n in config.train.report_to if n != "none")
    return [REPORTERS[name](config, run_dir, start_step) for name in chosen]
