"""The lm-evaluation-harness bridge: exported tasks score like bench, through lm-eval's own command line."""

import json

import pytest

from unmask.contrib.cli import main
from unmask.contrib.eval.harness import UnmaskLM, _cut
from unmask.contrib.eval.harness_tasks import export_tasks
from unmask.contrib.tasks import samples

ARGS = "pretrained=reference,policy=topk,gen_length=64,block_length=32,batch_size=20"


def test_exported_tasks_hold_the_bench_sample_sets(tmp_path):
    export_tasks(tmp_path / "t", tasks=["copy", "chain_sum"], n=5, seed=3)
    for task in ("copy", "chain_sum"):
        rows = [json.loads(line) for line in (tmp_path / "t" / f"unmask_{task}.jsonl").read_text().splitlines()]
        assert [r["prompt"] for r in rows] == [s.prompt for s in samples(task, 5, 3)]
        assert f"task: unmask_{task}" in (tmp_path / "t" / f"unmask_{task}.yaml").read_text()


def test_lm_eval_accuracy_equals_bench(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["export-tasks", str(tmp_path / "tasks"), "--tasks", "chain_sum", "--n", "20", "--seed", "4"]) == 0
    assert main(["lm-eval", "--model", "unmask", "--model_args", ARGS, "--tasks", "unmask_chain_sum", "--device", "cpu",
                 "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out")]) == 0
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    capsys.readouterr()
    assert main(["bench", "--tasks", "chain_sum", "--n", "20", "--seed", "4", "--gen-length", "64",
                 "--block-length", "32", "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)[0]
    assert results["results"]["unmask_chain_sum"]["acc,none"] * 100 == pytest.approx(bench["accuracy"])


def test_model_args_win_and_bad_ones_are_named():
    lm = UnmaskLM.create_from_arg_string("pretrained=reference,stop=none,batch_size=3", {"batch_size": "8",
                                                                                        "device": "cpu"})
    assert lm.batch_size == 3 and lm.components["stop"] == "none"
    with pytest.raises(ValueError, match="unknown argument.*gen_lenght"):
        UnmaskLM.create_from_arg_string("gen_lenght=64")
    with pytest.raises(NotImplementedError, match="generate_until tasks only"):
        lm.loglikelihood([])


def test_until_strings_cut_the_answer():
    assert _cut("ada ben\n\ncal", ["\n\n"]) == "ada ben"
    assert _cut("ada ben", "ben") == "ada " and _cut("ada", None) == "ada"
