"""PNG plots redrawn from the JSON the MAT-curve and throughput commands write, and the
`specplug mat-curves` / `specplug plot` subcommands that run them."""

import json

import pytest

from specplug import cli, plots
from specplug.drafters.errors import ConfigError


@pytest.fixture(autouse=True)
def lab_commands_only(monkeypatch):
    """Only the subcommands under test: the others may be under construction."""
    monkeypatch.setattr(cli, "COMMANDS", {n: cli.COMMANDS[n] for n in ("mat-curves", "plot")})


def write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text(json.dumps({"results": rows}))
    return str(p)


def test_replot_both_kinds(tmp_path):
    pytest.importorskip("matplotlib")
    mat = write(
        tmp_path,
        "mat.json",
        [
            {"algorithm": a, "prompt_set": s, "budget": b, "mat": 1.0 + b / 100}
            for a in ("racer[static]", "racer[dynamic]")
            for s in ("humaneval", "gsm8k")
            for b in (8, 16)
        ],
    )
    thr = write(
        tmp_path,
        "thr.json",
        [
            {
                "batch": b,
                "ar_tokens_per_s": 10.0 * b,
                "best_fixed_tokens_per_s": 11.0 * b,
                "policy_tokens_per_s": 12.0 * b,
                "policy_padded_tokens_per_s": 11.5 * b,
            }
            for b in (1, 2, 4)
        ],
    )
    for path in (mat, thr):
        png = plots.replot(path)
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_replot_rejects_other_json(tmp_path):
    with pytest.raises(ConfigError, match="neither"):
        plots.replot(write(tmp_path, "x.json", [{"foo": 1}]))


@pytest.mark.parametrize("command", ["mat-curves", "plot"])
def test_lab_commands_are_cli_subcommands(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: specplug {command}" in capsys.readouterr().out


def test_plot_command_redraws_and_reports_errors(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    mat = write(
        tmp_path, "mat.json", [{"algorithm": "racer", "prompt_set": "gsm8k", "budget": b, "mat": 2.0} for b in (8, 16)]
    )
    assert cli.main(["plot", mat]) == 0
    assert (tmp_path / "mat.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["plot", str(tmp_path / "missing.json")]) == 2
    assert "specplug: error: no such file" in capsys.readouterr().err


def _mat_part(tmp_path, name, budgets, limit=6):
    rows = [
        {"algorithm": a, "prompt_set": s, "prompts": limit, "budget": b, "mat": 1.0 + b / 100}
        for b in budgets
        for s in ("humaneval", "gsm8k")
        for a in ("racer[static]", "racer[dynamic]")
    ]
    cfg = {
        "algorithm": "racer",
        "budgets": ",".join(map(str, budgets)),
        "prompts": "humaneval,gsm8k",
        "limit": limit,
        "max_new_tokens": 96,
        "warmup": 0,
        "command": f"run {name}",
    }
    p = tmp_path / name
    p.write_text(json.dumps({"model": "m", "device": "cpu", "config": cfg, "results": rows}))
    return str(p)


def test_mat_curves_combines_runs_over_disjoint_budgets(tmp_path, capsys):
    a, b = _mat_part(tmp_path, "a.json", [8, 16]), _mat_part(tmp_path, "b.json", [64])
    out = tmp_path / "ab.json"

    def combine(*parts, dest=out):
        return cli.main(["mat-curves", "--combine", *parts, "--json", str(dest)])

    assert combine(a, b) == 0
    merged = json.loads(out.read_text())
    assert merged["config"]["budgets"] == "8,16,64" and len(merged["results"]) == 12
    assert merged["config"]["command"] == "run a.json + run b.json"
    table = (tmp_path / "ab.md").read_text()
    assert "| gsm8k | racer[dynamic] | 1.080 | 1.160 | 1.640 |" in table
    capsys.readouterr()
    assert combine(a, a, dest=tmp_path / "x.json") == 2
    assert "disjoint" in capsys.readouterr().err
    # PART.json:ALGO takes one algorithm's rows: a rerun of one tree mode replaces it
    c = _mat_part(tmp_path, "c.json", [8, 16, 64])
    assert combine(f"{a}:racer[dynamic]", f"{b}:racer[dynamic]", f"{c}:racer[static]") == 0
    assert len(json.loads(out.read_text())["results"]) == 12
    for parts, message in [
        ((f"{a}:racer[bogus]",), "no rows"),
        ((a, _mat_part(tmp_path, "d.json", [32], limit=3)), "other model or settings"),
        ((str(tmp_path / "missing.json"),), "no such file"),
    ]:
        assert combine(*parts) == 2
        assert message in capsys.readouterr().err
