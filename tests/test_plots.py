"""PNG plots redrawn from the JSON the MAT-curve and throughput commands write."""
import json

import pytest

from specplug import plots


def write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text(json.dumps({"results": rows}))
    return str(p)


def test_replot_both_kinds(tmp_path):
    mat = write(tmp_path, "mat.json", [
        {"algorithm": a, "prompt_set": s, "budget": b, "mat": 1.0 + b / 100}
        for a in ("racer[static]", "racer[dynamic]") for s in ("humaneval", "gsm8k") for b in (8, 16)])
    thr = write(tmp_path, "thr.json", [
        {"batch": b, "ar_tokens_per_s": 10.0 * b, "best_fixed_tokens_per_s": 11.0 * b,
         "policy_tokens_per_s": 12.0 * b, "policy_padded_tokens_per_s": 11.5 * b} for b in (1, 2, 4)])
    for path in (mat, thr):
        png = plots.replot(path)
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_replot_rejects_other_json(tmp_path):
    with pytest.raises(SystemExit, match="neither"):
        plots.replot(write(tmp_path, "x.json", [{"foo": 1}]))


def _mat_part(tmp_path, name, budgets, limit=6):
    rows = [{"algorithm": a, "prompt_set": s, "prompts": limit, "budget": b, "mat": 1.0 + b / 100}
            for b in budgets for s in ("humaneval", "gsm8k") for a in ("racer[static]", "racer[dynamic]")]
    cfg = {"algorithm": "racer", "budgets": ",".join(map(str, budgets)), "prompts": "humaneval,gsm8k",
           "limit": limit, "max_new_tokens": 96, "warmup": 0, "command": f"run {name}"}
    p = tmp_path / name
    p.write_text(json.dumps({"model": "m", "device": "cpu", "config": cfg, "results": rows}))
    return str(p)


def test_mat_curves_combines_runs_over_disjoint_budgets(tmp_path):
    from specplug import mat_curves
    a, b = _mat_part(tmp_path, "a.json", [8, 16]), _mat_part(tmp_path, "b.json", [64])
    out = tmp_path / "ab.json"
    assert mat_curves.main(["--combine", a, b, "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert merged["config"]["budgets"] == "8,16,64" and len(merged["results"]) == 12
    table = (tmp_path / "ab.md").read_text()
    assert "| gsm8k | racer[dynamic] | 1.080 | 1.160 | 1.640 |" in table
    with pytest.raises(SystemExit, match="disjoint"):
        mat_curves.main(["--combine", a, a, "--json", str(tmp_path / "x.json")])
    # PART.json:ALGO takes one algorithm's rows: a rerun of one tree mode replaces it
    c = _mat_part(tmp_path, "c.json", [8, 16, 64])
    assert mat_curves.main(["--combine", f"{a}:racer[dynamic]", f"{b}:racer[dynamic]", f"{c}:racer[static]",
                            "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["results"]) == 12
    with pytest.raises(SystemExit, match="no rows"):
        mat_curves.main(["--combine", f"{a}:racer[bogus]", "--json", str(out)])
    with pytest.raises(SystemExit, match="other model or settings"):
        mat_curves.main(["--combine", a, _mat_part(tmp_path, "d.json", [32], limit=3), "--json", str(out)])
