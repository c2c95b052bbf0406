"""``specplug bench-drafters``: the CLI runs, writes its JSON, frees every request; slow: memory
stays flat over 10k requests."""

import json

import pytest

from specplug import cli
from specplug.bench_drafters import SyntheticWorkload, memory_run


def test_cli_small_run_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = cli.main(
        [
            "bench-drafters",
            "--algorithms",
            "racer,token-recycling,suffix",
            "--batch",
            "8",
            "--steps",
            "3",
            "--warmup",
            "1",
            "--vocab",
            "2000",
            "--requests",
            "0",
            "--options",
            'racer={"global_cache": true}',
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "propose p50/p99 us" in text and "racer" in text
    data = json.loads(out.read_text())
    rows = {r["algorithm"]: r for r in data["results"]}
    assert set(rows) == {"racer", "token-recycling", "suffix"}
    assert rows["racer"]["options"] == {"global_cache": True}
    for r in rows.values():
        assert r["propose_us_p50"] > 0 and r["observe_us_p99"] >= r["observe_us_p50"]
        assert r["active_after_finish"] == 0 and r["mean_accepted_per_step"] >= 1.0
        assert 1 <= r["mean_tree_nodes"] <= 64 and r["global_bytes"] > 0


def test_cli_rejects_bad_input(capsys):
    assert cli.main(["bench-drafters", "--algorithms", "nope", "--requests", "0"]) == 2
    assert "unknown algorithm" in capsys.readouterr().err
    assert cli.main(["bench-drafters", "--options", "racer", "--requests", "0"]) == 2
    # options for an algorithm that is not run would be silently ignored: refused instead
    assert (
        cli.main(["bench-drafters", "--algorithms", "racer", "--requests", "0", "--options", 'suffix={"max_depth": 4}'])
        == 2
    )
    assert "not in --algorithms" in capsys.readouterr().err


def test_cli_options_by_variant_override_the_base_name(tmp_path):
    out = tmp_path / "b.json"
    assert (
        cli.main(
            [
                "bench-drafters",
                "--algorithms",
                "racer,racer[dynamic]",
                "--batch",
                "4",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--vocab",
                "2000",
                "--requests",
                "0",
                "--options",
                'racer={"min_match": 2}',
                "--options",
                'racer[dynamic]={"min_match": 3}',
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = {r["algorithm"]: r["options"] for r in json.loads(out.read_text())["results"]}
    assert rows["racer"] == {"min_match": 2}
    assert rows["racer[dynamic]"] == {"min_match": 3, "tree": "dynamic"}


def test_workload_is_repetitive_and_in_vocab():
    w = SyntheticWorkload(1000, seed=1)
    s = w.stream(500)
    assert s.shape == (500,) and s.min() >= 0 and s.max() < 1000
    assert len(set(zip(s[:-1], s[1:]))) < 400  # bigrams repeat (code-like)
    alt = w.alternatives(s[:3])
    assert alt.shape == (3, 8) and alt.max() < 1000


@pytest.mark.slow
@pytest.mark.parametrize("name", ["racer", "token-recycling", "suffix"])
def test_memory_flat_over_10k_requests(name):
    class Args:
        vocab, seed, topk, budget, requests, memory_batch = 49152, 0, 8, 64, 10000, 64

    rss = memory_run(name, {"global_cache": True} if name == "racer" else {}, Args)
    assert rss["active_after_finish"] == 0
    assert rss["10000"] <= rss["1000"] * 1.10 + 16, rss  # MiB: caps reached by 1k requests
