"""Load math problems as Tasks: local jsonl/parquet files, Hugging Face datasets, gsm8k, math500."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from environments.base import EnvError, Task


class _Named(NamedTuple):
    filename: str  # the local copy in shared/data
    repo: str
    config: str | None
    question_field: str
    answer_field: str
    splits: list[str]


_NAMED = {
    "gsm8k": _Named(
        "gsm8k_test.jsonl", "openai/gsm8k", "main", "question", "answer", ["train", "test"]
    ),
    "math500": _Named(
        "math500_test.jsonl", "HuggingFaceH4/MATH-500", None, "problem", "answer", ["test"]
    ),
}
# The shared copies hold only these splits; any other split comes from the hub.
_LOCAL_SPLIT = "test"

_CALCULATOR = re.compile(r"<<[^>]*>>")


def named_datasets() -> list[str]:
    """Names accepted by :func:`load_named`."""
    return sorted(_NAMED)


def named_splits(name: str) -> list[str]:
    """The splits of the named dataset ``name``."""
    return list(_NAMED[name].splits)


def find_data_file(filename: str) -> Path | None:
    """Locate ``filename`` in ``$ICRL_DATA_DIR``, else in a ``shared/data`` folder of the current
    directory or any parent, else of this package's directory or any parent; None if absent."""
    candidates: list[Path] = []
    if os.environ.get("ICRL_DATA_DIR"):
        candidates.append(Path(os.environ["ICRL_DATA_DIR"]) / filename)
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidates.append(folder / "shared" / "data" / filename)
    return next((path for path in candidates if path.is_file()), None)


def _row_to_task(
    row: Any, where: str, task_id: str, question_field: str, answer_field: str
) -> Task:
    if not isinstance(row, Mapping):
        raise EnvError(f"{where}: not a JSON object")
    for field in (question_field, answer_field):
        if field not in row:
            raise EnvError(f"{where}: missing field '{field}'")
        if row[field] is None:
            raise EnvError(f"{where}: field '{field}' is null")
    metadata = {k: v for k, v in row.items() if k not in (question_field, answer_field)}
    return Task(task_id, str(row[question_field]), str(row[answer_field]).strip(), metadata)


def _rows_jsonl(path: Path) -> Iterable[tuple[str, Any]]:
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path.name}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise EnvError(f"{where}: not UTF-8 text (byte {err.start})") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise EnvError(f"{where}: not valid JSON") from None


def _rows_parquet(path: Path) -> Iterable[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise EnvError(f"{path}: reading parquet needs the 'pyarrow' package") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several unrelated types for a damaged file
        raise EnvError(f"{path}: not a readable parquet file ({error})") from None
    for number, row in enumerate(rows, start=1):
        yield f"{path.name}: row {number}", row


def load_file(
    path: str | os.PathLike[str],
    question_field: str = "question",
    answer_field: str = "answer",
    id_prefix: str | None = None,
) -> list[Task]:
    """Tasks from a local ``.jsonl`` or ``.parquet`` file; other fields go to ``metadata``.

    A bad row raises :class:`EnvError` naming the file and its 1-based line (jsonl) or row
    (parquet) number, e.g. ``data.jsonl:7: missing field 'answer'``.
    """
    file = Path(path)
    if not file.is_file():
        raise EnvError(f"data file not found: {file}")
    readers: dict[str, Callable[[Path], Iterable[tuple[str, Any]]]] = {
        ".jsonl": _rows_jsonl,
        ".parquet": _rows_parquet,
    }
    if file.suffix not in readers:
        raise EnvError(f"{file}: unsupported data file type (use .jsonl or .parquet)")
    prefix = id_prefix or file.stem
    tasks = [
        _row_to_task(row, where, f"{prefix}-{i:05d}", question_field, answer_field)
        for i, (where, row) in enumerate(readers[file.suffix](file))
    ]
    if not tasks:
        raise EnvError(f"{file}: the dataset is empty")
    return tasks


def _parse_hf(spec: str) -> tuple[str, str | None]:
    parts = spec.removeprefix("hf:").split(":")
    if not parts[0] or len(parts) > 2:
        raise EnvError(f"bad Hugging Face dataset '{spec}'; write hf:REPO or hf:REPO:CONFIG")
    return parts[0], parts[1] if len(parts) == 2 else None


def _hub_error(repo: str, error: Exception) -> EnvError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return EnvError(
        f"Hugging Face dataset '{repo}' is not available locally and could not be fetched: {reason}"
    )


def hf_splits(spec: str) -> list[str]:
    """Split names of the Hugging Face dataset ``hf:REPO[:CONFIG]``."""
    repo, config = _parse_hf(spec)
    try:
        import datasets

        return list(datasets.get_dataset_split_names(repo, config))
    except ImportError:
        raise EnvError("Hugging Face datasets need the 'datasets' package") from None
    except Exception as error:  # offline, unknown repo, bad config: all one message
        raise _hub_error(repo, error) from None


def load_hf(
    spec: str,
    split: str,
    question_field: str = "question",
    answer_field: str = "answer",
    id_prefix: str | None = None,
) -> list[Task]:
    """Tasks from split ``split`` of the Hugging Face dataset ``hf:REPO[:CONFIG]``."""
    repo, config = _parse_hf(spec)
    try:
        import datasets
    except ImportError:
        raise EnvError("Hugging Face datasets need the 'datasets' package") from None
    try:
        rows = datasets.load_dataset(repo, config, split=split)
    except Exception as error:  # offline, unknown repo/split: the caller wants one line
        raise _hub_error(repo, error) from None
    prefix = id_prefix or f"{repo.rsplit('/', 1)[-1]}-{split}"
    where = f"{repo}[{split}]"
    tasks = [
        _row_to_task(
            row, f"{where}: row {n}", f"{prefix}-{n - 1:05d}", question_field, answer_field
        )
        for n, row in enumerate(rows, start=1)
    ]
    if not tasks:
        raise EnvError(f"{where}: the dataset is empty")
    return tasks


def gsm8k_final(solution: str) -> str:
    """The final answer of a GSM8K worked solution: the text after the last '#### ', no commas."""
    if "#### " not in solution:
        raise EnvError("GSM8K solution has no '#### ' final-answer line")
    return solution.rsplit("#### ", 1)[1].strip().replace(",", "")


def gsm8k_demonstration(solution: str) -> str:
    """The worked solution without ``<<…>>`` calculator notes, ending in ``\\boxed{final}``."""
    body = _CALCULATOR.sub("", solution.rsplit("#### ", 1)[0]).rstrip()
    box = f"\\boxed{{{gsm8k_final(solution)}}}"
    return f"{body}\n{box}" if body else box


def load_named(name: str, split: str) -> list[Task]:
    """Tasks of the named dataset ``gsm8k`` or ``math500``: local copy if present, else the hub."""
    if name not in _NAMED:
        raise EnvError(f"unknown dataset '{name}'; choose one of: {', '.join(named_datasets())}")
    filename, repo, config, question_field, answer_field, splits = _NAMED[name]
    if split not in splits:
        raise EnvError(f"unknown split '{split}' for {name}; valid splits: {', '.join(splits)}")
    local = find_data_file(filename) if split == _LOCAL_SPLIT else None
    prefix = f"{name}-{split}"
    if local is not None:
        raw = load_file(local, question_field, answer_field, id_prefix=prefix)
    else:
        spec = f"hf:{repo}:{config}" if config else f"hf:{repo}"
        raw = load_hf(spec, split, question_field, answer_field, id_prefix=prefix)
    if name != "gsm8k":
        return raw
    # GSM8K's answer field is the worked solution; the gold is only its final line.
    return [
        Task(t.id, t.prompt, gsm8k_final(t.answer or ""), {**t.metadata, "solution": t.answer})
        for t in raw
    ]
