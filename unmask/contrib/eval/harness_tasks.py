"""Offline tasks for lm-evaluation-harness: each task of the suite as a config ``unmask_<task>`` over a local
JSONL file, scored by unmask's own scorers, on the sample set of ``unmask bench --n N --seed S``.

Writing them needs no lm-eval; running them: ``unmask lm-eval ... --tasks unmask_copy --include_path DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from unmask._files import staged_directory

__all__ = ["export_tasks"]

SCORING = '''"""Scoring for the tasks written by unmask export-tasks: unmask's own scorers on the same sample sets."""
from functools import lru_cache

from unmask.contrib.tasks import samples, score


@lru_cache(maxsize=None)
def _sample_set(task, n, seed):
    return samples(task, n, seed)


def process_results(doc, results):
    sample = _sample_set(doc["task"], doc["n"], doc["seed"])[doc["index"]]
    return {"acc": float(score(sample, results[0].strip()))}
'''


def export_tasks(directory: str | Path, *, tasks: Sequence[str], n: int, seed: int, overwrite: bool = False) -> Path:
    """Write lm-eval task configs ``unmask_<task>`` (YAML, JSONL data, the scorer hook) into ``directory``;
    run them with ``--include_path directory``."""
    from unmask.contrib.tasks import check_evaluation_seeds, samples

    check_evaluation_seeds(n, seed)
    directory = Path(directory)
    with staged_directory(directory, command="export-tasks", overwrite=overwrite) as staging:
        (staging / "unmask_scoring.py").write_text(SCORING)
        for task in tasks:
            rows = [{"task": task, "n": n, "seed": seed, "index": i, "prompt": s.prompt, "answer": s.answer}
                    for i, s in enumerate(samples(task, n, seed))]
            (staging / f"unmask_{task}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
            data = (directory / f"unmask_{task}.jsonl").resolve()
            (staging / f"unmask_{task}.yaml").write_text(_task_yaml(task, data))
    return directory


def _task_yaml(task: str, data: Path) -> str:
    return "\n".join([
        f"task: unmask_{task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data))}",
        "test_split: test",
        "output_type: generate_until",
        'doc_to_text: "{{prompt}}"',
        'doc_to_target: "{{answer}}"',
        "target_delimiter: \"\"",
        "generation_kwargs:",
        "  until: []",
        "process_results: !function unmask_scoring.process_results",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        "",
    ])
