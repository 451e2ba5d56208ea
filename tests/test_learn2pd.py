"""Learn2PD end to end on the bundled model: traces, resumable collection, filter training, the policy."""

import json

import pytest
import torch

from unmask.contrib.cli import main
from unmask.contrib.models.reference import load_reference_model
from unmask.contrib.tasks import samples, score
from unmask.contrib.models.transformers import decode_text
from unmask.filters import load_filter
from unmask.contrib.train.traces import FILTER_SEED, Traces, collect
from unmask.contrib.train.filters import split_by_prompt, train_filter
from unmask.core.types import DecodeConfig
from unmask.strategies.learn2pd import Learn2PDPolicy

SETTINGS = dict(tasks=["shuffle", "sort"], n=6, gen_length=32, block_length=16, batch_size=3)


@pytest.fixture(scope="module")
def reference():
    return load_reference_model()


@pytest.fixture(scope="module")
def traces_dir(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("traces")
    collect(*reference, out, progress=False, **SETTINGS)
    return out


def test_traces_label_the_oracle_steps(traces_dir):
    traces = Traces(traces_dir)
    manifest = traces.manifests[0]
    assert len(manifest["shards"]) == 4 and manifest["settings"]["seed"] == FILTER_SEED
    assert traces.stats.confidence.shape == traces.labels.shape == (len(traces), 16)
    # Nearly every oracle step has a masked position whose prediction is already final (where none is, the
    # oracle's canvas has drifted from vanilla's and its progress floor commits the most confident one).
    assert (traces.labels & traces.stats.masked).any(1).float().mean() >= 0.95
    assert ((traces.stats.confidence > 0) & (traces.stats.confidence <= 1)).all()
    oracle = sum(s["nfe"] for s in manifest["shards"].values())
    assert oracle < sum(s["reference_nfe"] for s in manifest["shards"].values())


def test_collect_resumes_after_a_lost_shard_with_identical_files(reference, traces_dir):
    manifest_path = traces_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    lost = sorted(manifest["shards"])[-1]
    before = (traces_dir / lost).read_bytes()
    (traces_dir / lost).unlink()  # as if killed before the shard was written
    del manifest["shards"][lost]
    manifest_path.write_text(json.dumps(manifest))
    resumed = collect(*reference, traces_dir, progress=False, **SETTINGS)
    assert lost in resumed["shards"] and (traces_dir / lost).read_bytes() == before
    assert not list(traces_dir.glob(".*"))  # no temporary files left


def test_collect_refuses_evaluation_seeds_and_changed_settings(reference, traces_dir):
    with pytest.raises(ValueError, match="evaluation seeds"):
        collect(*reference, traces_dir, progress=False, **{**SETTINGS, "seed": 0})
    with pytest.raises(ValueError, match="gen_length differ"):
        collect(*reference, traces_dir, progress=False, **{**SETTINGS, "gen_length": 64})


def test_split_keeps_each_prompt_in_one_part(traces_dir):
    traces = Traces(traces_dir)
    parts = split_by_prompt(traces)
    assert sum(p.long() for p in parts.values()).eq(1).all()
    keys = traces.task * 10**9 + traces.prompt
    train, test = set(keys[parts["train"]].tolist()), set(keys[parts["test"]].tolist())
    assert train and not train & test


@pytest.mark.parametrize("kind", ["mlp", "gbdt"])
def test_trained_filter_drives_the_policy(reference, traces_dir, tmp_path, kind):
    trained = train_filter(traces_dir, kind, tmp_path / kind, params={"max_iter": 30})
    assert set(trained.info["metrics"]) <= {"validation", "test"}
    loaded = load_filter(tmp_path / kind)
    assert loaded.info["traces"]["model"] == Traces(traces_dir).manifests[0]["settings"]["model"]
    model, tokenizer = reference
    prompts = [s.prompt for s in samples("chain_sum", 4, seed=0)]
    # EoTP changes this small model's answers on its own, so the reference is vanilla with EoTP.
    vanilla, _ = decode_text(model, tokenizer, prompts, gen_length=32, block_length=16, stop="eotp")
    answers, result = decode_text(model, tokenizer, prompts, gen_length=32, block_length=16,
                                  policy=Learn2PDPolicy(filter=str(tmp_path / kind)), stop="eotp")
    assert (result.nfe < 32).all()
    assert result.components["policy"]["params"]["filter"] == str(tmp_path / kind)
    assert sum(a == b for a, b in zip(answers, vanilla)) >= 2  # a filter from 12 prompts; quality: below


def test_mlp_filter_refuses_another_block_length(reference, traces_dir, tmp_path):
    train_filter(traces_dir, "mlp", tmp_path / "mlp", params={"max_iter": 5})
    model, tokenizer = reference
    with pytest.raises(ValueError, match="trained on blocks of 16 tokens"):
        decode_text(model, tokenizer, ["1 + 2 ="], gen_length=32, block_length=32,
                    policy=Learn2PDPolicy(filter=str(tmp_path / "mlp")))


def test_cli_collect_and_train_filter(tmp_path, capsys):
    assert main(["collect", "--tasks", "shuffle", "--n", "2", "--gen-length", "32", "--block-length", "16",
                 "--out", str(tmp_path / "t")]) == 0
    assert "records from 2 prompts" in capsys.readouterr().out
    assert main(["train-filter", "--traces", str(tmp_path / "t"), "--kind", "gbdt", "--param", "max_iter=5",
                 "--out", str(tmp_path / "f")]) == 0
    assert json.loads(capsys.readouterr().out)["features"] == "position_stats"
    assert main(["train-filter", "--traces", str(tmp_path / "t"), "--kind", "svm", "--out", str(tmp_path / "g")]) == 2
    assert "unknown filters name 'svm'" in capsys.readouterr().err


def test_shipped_filters_decode_the_bundled_model_with_fewer_forwards(reference):
    model, tokenizer = reference
    prompts = [s.prompt for s in samples("sort", 8, seed=0)]
    vanilla, base = decode_text(model, tokenizer, prompts, gen_length=64, block_length=32)
    for name in ("mlp", "gbdt"):
        answers, result = decode_text(model, tokenizer, prompts, gen_length=64, block_length=32,
                                      policy=f"learn2pd:filter={name}")
        assert result.nfe.float().mean() * 4 < base.nfe.float().mean()
        assert sum(a == b for a, b in zip(answers, vanilla)) >= 6
    assert torch.equal(base.nfe, torch.full_like(base.nfe, 64))


def test_collect_takes_the_users_prompts(reference, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": s.prompt}) + "\n" for s in samples("copy", 3, seed=5)) + "\n")
    assert main(["collect", "--prompts", str(prompts), "--gen-length", "32", "--block-length", "16",
                 "--out", str(tmp_path / "t")]) == 0
    assert "records from 3 prompts" in capsys.readouterr().out
    traces = Traces(tmp_path / "t")
    assert traces.tasks == ["prompts"] and "prompts_sha256" in traces.manifests[0]["settings"]
    assert sorted(set(traces.prompt.tolist())) == [0, 1, 2]  # prompts are named by their line


def test_collect_under_a_constraint_records_it_and_decodes_under_it(reference, tmp_path, capsys, monkeypatch):
    import unmask.contrib.train.traces as traces_module

    decoded = []

    def spy(*args, **kwargs):
        decoded.append(traces_module.decode.__wrapped__(*args, **kwargs))
        return decoded[-1]

    spy.__wrapped__ = traces_module.decode
    monkeypatch.setattr(traces_module, "decode", spy)
    assert main(["collect", "--tasks", "shuffle", "--n", "4", "--gen-length", "32", "--block-length", "16",
                 "--policy", "topk:k=8", "--constraint", "distinct_items", "--out", str(tmp_path / "t")]) == 0
    assert Traces(tmp_path / "t").manifests[0]["settings"]["constraint"] == "distinct_items"
    assert len(decoded) == 2  # vanilla and topk:k=8, each under the constraint: no name twice in a group
    tokenizer = reference[1]
    for result in decoded:
        for row, length in zip(result.tokens.tolist(), result.answer_lengths.tolist()):
            for group in tokenizer.decode(row[:length]).split("/"):
                assert len(set(group.split())) == len(group.split())
    assert main(["collect", "--tasks", "shuffle", "--n", "4", "--constraint", "no_such", "--out",
                 str(tmp_path / "u")]) == 2
    assert "no_such" in capsys.readouterr().err and not (tmp_path / "u").exists()


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "copy: ada"}\nnot json\n', "prompts.jsonl:2: not valid JSON"),
    ('{"text": "copy: ada"}\n', 'prompts.jsonl:1: each line must be an object with a non-empty "prompt"'),
    ("\n", "holds no prompts"),
])
def test_collect_refuses_a_bad_prompts_file(tmp_path, capsys, text, message):
    (tmp_path / "prompts.jsonl").write_text(text)
    assert main(["collect", "--prompts", str(tmp_path / "prompts.jsonl"), "--out", str(tmp_path / "t")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_learn2pd_warns_once_when_its_filter_was_trained_on_other_weights(reference):
    from unmask.contrib.models.transformers import weights_hash

    policy = Learn2PDPolicy(filter="mlp")
    with pytest.warns(UserWarning, match="was trained on model .* not on this one"):
        policy.warn_if_trained_on_another_model("0" * 64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.warn_if_trained_on_another_model("0" * 64)  # once per pair
        policy.warn_if_trained_on_another_model(weights_hash(reference[0]))  # its own model: silent


def test_bench_and_ablate_pass_the_chat_choice_to_the_prompts(reference, monkeypatch):
    from unmask.contrib.eval import runner
    from unmask.contrib.eval.bench import bench

    seen = []
    real = runner.encode_prompts
    monkeypatch.setattr(runner, "encode_prompts", lambda tok, prompts, chat=None: seen.append(chat) or real(
        tok, prompts, chat=chat))
    for chat in (None, False):
        rows = bench(*reference, tasks=["copy"], n=2, seed=0, progress=False, chat=chat,
                     config=DecodeConfig(gen_length=16, block_length=16))
        assert rows[0]["chat"] is chat and seen[-1] is chat


def test_traces_along_a_filter_merge_with_the_oracles(reference, traces_dir, tmp_path):
    """On-policy traces: decodes of a learned policy, labelled against vanilla, trained on with the oracle's."""
    train_filter(traces_dir, "gbdt", tmp_path / "f0", params={"max_iter": 10})
    policy = f"learn2pd:filter={tmp_path / 'f0'},tau=0.5"
    manifest = collect(*reference, tmp_path / "own", progress=False, policy=policy, **SETTINGS)
    assert manifest["settings"]["policy"] == policy
    oracle, own = Traces(traces_dir), Traces(tmp_path / "own")
    both = Traces(traces_dir, tmp_path / "own")
    assert len(both) == len(oracle) + len(own) and both.tasks == ["shuffle", "sort"]
    # A prompt keeps one identity across the two directories, so the split never separates its records.
    parts = split_by_prompt(both)
    keys = both.task * 10**9 + both.prompt
    for part in parts.values():
        assert not set(keys[part].tolist()) & set(keys[~part].tolist())
    trained = train_filter([traces_dir, tmp_path / "own"], "gbdt", tmp_path / "f1", params={"max_iter": 10})
    assert [s["policy"] for s in trained.info["traces"]["sets"]] == ["oracle", policy]
    collect(*reference, tmp_path / "other", progress=False, **{**SETTINGS, "block_length": 32, "n": 3})
    with pytest.raises(ValueError, match="differ in block_length"):
        Traces(traces_dir, tmp_path / "other")


def test_correct_labels_follow_a_decodes_own_valid_answer(reference, tmp_path):
    """labels='correct': a decode that ends in another valid Latin square than vanilla's is labelled against its
    own output; every other row keeps vanilla's labels."""
    settings = {**SETTINGS, "tasks": ["latin_square"], "batch_size": 6}
    policy = "threshold:tau=0.7"
    manifest = collect(*reference, tmp_path / "own", progress=False, policy=policy, labels="correct", **settings)
    collect(*reference, tmp_path / "vanilla", progress=False, policy=policy, **settings)
    assert manifest["settings"]["labels"] == "correct"
    drawn = samples("latin_square", 6, FILTER_SEED, part="train")  # collect's prompts
    config = DecodeConfig(gen_length=32, block_length=16)
    answers, _ = decode_text(*reference, [s.prompt for s in drawn], config=config, policy=policy)
    vanilla, _ = decode_text(*reference, [s.prompt for s in drawn], config=config)
    other = {s.seed for s, a, v in zip(drawn, answers, vanilla) if a != v and score(s, a)}
    assert other and manifest["shards"]["latin_square-00000.safetensors"]["correct"] == sum(
        score(s, a) for s, a in zip(drawn, answers))
    own, reference_labelled = Traces(tmp_path / "own"), Traces(tmp_path / "vanilla")
    assert torch.equal(own.stats.tokens, reference_labelled.stats.tokens)
    moved = torch.tensor([int(p) in other for p in own.prompt])
    assert torch.equal(own.labels[~moved], reference_labelled.labels[~moved])
    assert not torch.equal(own.labels[moved], reference_labelled.labels[moved])
    # A block's last step commits every position still masked, so along the decode's own answer all are final.
    for prompt in other:
        for block in own.block.unique():
            last = ((own.prompt == prompt) & (own.block == block)).nonzero()[-1, 0]
            assert own.labels[last][own.stats.masked[last]].all()
    with pytest.raises(ValueError, match="labels='correct' needs the tasks' scorers"):
        collect(*reference, tmp_path / "p", tasks=[], n=1, progress=False, prompts=["copy: a b"], labels="correct")
    with pytest.raises(ValueError, match="labels='final': must be one of reference, correct"):
        collect(*reference, tmp_path / "p", progress=False, labels="final", **settings)


def test_traces_of_an_older_format_are_refused_clearly(traces_dir, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((traces_dir / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": "unmask-traces/1"}))
    with pytest.raises(ValueError, match="lack the block's tokens"):
        Traces(old)


def test_the_policy_takes_the_tau_its_filter_was_trained_for(traces_dir, tmp_path):
    train_filter(traces_dir, "gbdt", tmp_path / "f", params={"max_iter": 5}, tau=0.7)
    assert Learn2PDPolicy(filter=str(tmp_path / "f")).threshold == 0.7
    assert Learn2PDPolicy(filter=str(tmp_path / "f"), tau=0.9).threshold == 0.9
