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
