import json

import unmask
from unmask.contrib.cli import main


def test_list_json_has_every_kind(capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {"topk", "random", "threshold", "oracle", "entropy_bound", "union"} <= set(listing["policies"])
    assert {"eotp", "max_nfe"} <= set(listing["stops"])
    assert "none" in listing["caches"]
    assert listing["policies"]["threshold"]["summary"].startswith("Commit every masked position")


def test_list_prints_a_table(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "policies:" in out and "threshold" in out and f"unmask {unmask.__version__}" in out
