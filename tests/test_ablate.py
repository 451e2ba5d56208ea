"""Ablation grids: validation before decoding, resumable JSONL results, reports and plots."""


import pytest
from hypothesis import given
from hypothesis import strategies as st

import unmask
from unmask.contrib.eval import runner
from unmask.contrib.eval.ablate import GridError, load_grid, read_rows
from unmask.contrib.cli import main
from unmask.contrib.eval.report import aup_rows, pareto_front, pb_rows, pb_score, verdict_rows, with_speedups

GRID = {
    "name": "small", "tasks": ["chain_sum", "sort"], "n": 3, "seed": 0, "gen_lengths": [32],
    "block_length": 16, "policies": ["topk", "threshold:tau=0.9", "oracle"], "stops": ["none", "eotp"],
    "caches": ["none"], "batch_size": 3,
}
TIMING = {"wall_s", "tokens_per_s", "wall_speedup", "machine"}


def deterministic(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def test_a_killed_grid_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path, monkeypatch):
    whole = unmask.ablate(GRID, tmp_path / "whole.jsonl", progress=False)
    assert len(whole) == 12 and sum(row["baseline"] for row in whole) == 2

    real_run_cell, calls = runner.run_cell, []

    def dying_run_cell(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt  # killed in the middle of the sixth cell
        calls.append(1)
        return real_run_cell(*args, **kwargs)

    monkeypatch.setattr(runner, "run_cell", dying_run_cell)
    with pytest.raises(KeyboardInterrupt):
        unmask.ablate(GRID, tmp_path / "resumed.jsonl", progress=False)
    assert len(read_rows(tmp_path / "resumed.jsonl")) == 5
    monkeypatch.setattr(runner, "run_cell", real_run_cell)
    resumed = unmask.ablate(GRID, tmp_path / "resumed.jsonl", progress=False)
    key = lambda row: row["cell"]  # noqa: E731
    assert deterministic(sorted(resumed, key=key)) == deterministic(sorted(whole, key=key))
    assert not list(tmp_path.glob(".*"))


def test_rows_record_how_they_were_made(tmp_path):
    rows = unmask.ablate({**GRID, "tasks": ["chain_sum"], "policies": ["topk"], "stops": ["none"]},
                         tmp_path / "r.jsonl", progress=False)
    row = rows[0]
    assert row["components"]["policy"]["name"] == "topk" and len(row["model_sha256"]) == 64
    assert {"cpu", "threads"} <= set(row["machine"]) and row["versions"]["unmask"] == unmask.__version__
    assert row["nfe_p50"] == row["nfe_p90"] == 32 and row["nfe_speedup"] == 1.0
    assert len(row["first_sample"]["commit_step"]) == 32


@pytest.mark.parametrize("change, message", [
    ({"policies": ["topk", "nope"]}, r"cell \[chain_sum \| nope \| none \| none \| 32\]: field 'policy'"),
    ({"policies": ["threshold:tau=3"]}, r"field 'policy': .*tau must lie in \[0, 1\]"),
    ({"stops": []}, "field 'stops' is empty"),
    ({"caches": ["none", "prefix:refresh_every=-1"]}, "field 'cache'"),
    ({"gen_lengths": [40]}, "field 'gen_length': gen_length=40 must be a multiple of block_length=16"),
    ({"tasks": ["chain_sum", "poetry"]}, r"cell \[poetry .*field 'task'"),
    ({"n": 0}, "field 'n' must be a positive integer"),
    ({"baseline": {"policy": "random"}}, "field 'baseline'"),
    ({"colour": "red"}, "unknown field"),
])
def test_invalid_grids_fail_before_decoding_naming_cell_and_field(change, message):
    with pytest.raises(GridError, match=message):
        load_grid({**GRID, **change})


def test_report_and_plots_from_the_cli(tmp_path, capsys):
    grid = tmp_path / "grid.toml"
    grid.write_text('tasks = ["chain_sum"]\nn = 2\ngen_lengths = [32]\nblock_length = 16\n'
                    'policies = ["topk", "threshold:tau=0.5", "threshold:tau=0.9"]\nstops = ["none"]\n')
    assert main(["ablate", str(grid), "--report", str(tmp_path / "r.md"), "--plots", str(tmp_path / "plots")]) == 0
    report = (tmp_path / "r.md").read_text()
    assert "| chain_sum | threshold | none | none | 32 | 2 |" in report  # AUP over the two tau
    assert (tmp_path / "plots" / "pareto.png").stat().st_size > 1000
    assert [p.name for p in (tmp_path / "plots").glob("order-*.png")] == ["order-chain_sum-32.png"]
    assert len(read_rows(tmp_path / "grid.jsonl")) == 3
    assert "| threshold | none | none | 32 | 2 |" in report  # PBx over the two tau
    capsys.readouterr()
    assert main(["ablate", str(tmp_path / "missing.toml")]) == 2
    # The same report from the stored rows, no decode; PB levels asked for.
    capsys.readouterr()
    assert main(["report", str(tmp_path / "grid.jsonl"), "--pb", "75,50"]) == 0
    printed = capsys.readouterr().out
    assert "| family | stop | cache | gen_length | configs | PB75 | PB50 |" in printed
    assert "| chain_sum | threshold | none | none | 32 | 2 |" in printed
    assert main(["report", str(tmp_path / "none.jsonl")]) == 2
    assert "rows: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "grid.jsonl"), "--pb", "101"])
    assert "argument --pb: must be comma-separated scores in [0, 100]" in capsys.readouterr().err


@given(st.lists(st.tuples(st.floats(0.5, 32), st.floats(0, 100)), min_size=1, max_size=8), st.booleans())
def test_pb_scores_fall_as_the_level_rises_and_a_lone_point_qualifies_by_its_score(points, discrete):
    scores = [pb_score(points, level, discrete=discrete) for level in (90, 80, 70, 60, 0)]
    found = [s for s in scores if s is not None]
    assert found == sorted(found)  # a higher level never allows more tokens per step
    assert scores[-1] is not None  # every point reaches 0
    tps, score = points[0]
    assert (pb_score([points[0]], 50, discrete=discrete) is not None) == (score >= 50)


def test_pb_rows_read_top_k_at_its_k_and_interpolate_adaptive_sweeps():
    def row(policy, task, accuracy, tpf, steps=None):
        return {"task": task, "policy": policy, "stop": "none", "cache": "none", "gen_length": 32, "steps": steps,
                "accuracy": accuracy, "tokens_per_forward": tpf}

    rows = [row("topk", "a", 95, 1.0), row("topk", "b", 85, 1.0),  # k from the schedule: 32 / 32 steps
            row("topk:k=4", "a", 80, 3.1), row("topk:k=4", "b", 70, 3.1),  # measured tpf is ignored: k = 4
            row("threshold:tau=0.9", "a", 90, 4.0), row("threshold:tau=0.9", "b", 90, 6.0),  # (5 tps, 90)
            row("threshold:tau=0.5", "a", 70, 9.0), row("threshold:tau=0.5", "b", 70, 11.0)]  # (10 tps, 70)
    threshold, top = pb_rows(rows)
    assert (threshold["family"], threshold["pb90"], threshold["pb80"], threshold["pb60"]) == ("threshold", 5.0, 7.5, 10.0)
    assert (top["family"], top["configs"], top["pb90"], top["pb80"], top["pb70"]) == ("topk", 2, 1.0, 1.0, 4.0)


def test_pareto_front_and_aup_rows():
    assert pareto_front([(10, 50), (5, 40), (20, 50), (8, 60), (30, 70)]) == [(5, 40), (8, 60), (30, 70)]
    rows = [{"task": "t", "policy": f"threshold:tau={tau}", "stop": "none", "cache": "none", "gen_length": 32,
             "tokens_per_forward": tpf, "accuracy": acc} for tau, tpf, acc in ((0.9, 2.0, 80.0), (0.5, 4.0, 78.0))]
    (row,) = aup_rows(rows)
    assert row["family"] == "threshold" and row["points"] == 2 and 2 * 80 < row["aup"] < 4 * 80


def test_verdicts_name_the_winners_and_losers_against_the_baseline():
    def row(policy, accuracy, nfe, wall, baseline=False):
        return {"task": "t", "policy": policy, "stop": "none", "cache": "none", "gen_length": 32,
                "accuracy": accuracy, "nfe_mean": nfe, "wall_s": wall, "baseline": baseline}

    rows = [row("topk", 90.0, 32, 9.0, baseline=True), row("fast", 89.0, 4, 2.0), row("faster", 88.0, 2, 1.0),
            row("best", 94.0, 20, 5.0), row("bad", 86.0, 3, 0.5),
            {**row("other task, no baseline", 10.0, 1, 0.1), "task": "u"}]
    (verdict,) = verdict_rows(rows)
    assert verdict["baseline"] == "topk (90)" and verdict["most_accurate"] == "best (94)"
    # "faster" is 2 points down: not a tie; "bad" is 4 points down: a loss.
    assert verdict["fewest_forwards"] == "fast (89, 4 forwards)"
    assert verdict["shortest_wall"] == "fast (89, 2 s)"
    assert verdict["losing"] == "bad (86)"


def test_report_ratios_follow_the_baseline_row_in_the_file():
    def row(policy, nfe, wall, baseline=False, task="t"):
        return {"task": task, "policy": policy, "gen_length": 32, "nfe_mean": nfe, "wall_s": wall,
                "baseline": baseline, "nfe_speedup": 99.0, "wall_speedup": 99.0}

    # The baseline was run again (8 s, was slower): ratios stored with the old one are taken again.
    rows = with_speedups([row("fast", 4, 2.0), row("topk", 32, 8.0, baseline=True), row("x", 4, 1.0, task="u")])
    assert [(r["nfe_speedup"], r["wall_speedup"]) for r in rows] == [(8.0, 4.0), (1.0, 1.0), (None, None)]


def test_a_retrained_filter_reruns_its_rows(tmp_path):
    import attrs

    from unmask.filters import save_filter
    from unmask.strategies.learn2pd import _synthetic_filter

    folder = tmp_path / "filter"
    spec = f"learn2pd:filter={folder}"
    grid = {**GRID, "tasks": ["chain_sum"], "policies": [spec], "stops": ["none"],
            "baseline": {"policy": spec, "stop": "none", "cache": "none"}}
    fingerprints = []
    for retraining in range(2):
        save_filter(attrs.evolve(_synthetic_filter(), info={"retraining": retraining}), folder, overwrite=True)
        (row,) = unmask.ablate(grid, tmp_path / "r.jsonl", progress=False)
        fingerprints.append(row["filter_sha256"])
    assert len(set(fingerprints)) == 2 and len(fingerprints[0]) == 64
    assert [r["filter_sha256"] for r in read_rows(tmp_path / "r.jsonl")] == fingerprints
