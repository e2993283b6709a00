"""mirasol-bench as a smoke test on the CPU backends: the report's schema and a real PNG. Not a speed claim."""

import json
import shutil

from click.testing import CliRunner

from mirasol_edge.measure.cli import SCHEMA, STAGES, main
from tests.media import write_clip


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_side_by_side_report_and_plot(tmp_path, tiny_engines):
    clip = write_clip(tmp_path / "clip.mp4", 6.0, fps=10, size=(64, 48), beeps=(2.0,))
    out, png, page = tmp_path / "r" / "report.json", tmp_path / "r" / "plot.png", tmp_path / "r" / "report.html"
    result = run("-e", tiny_engines, "-e", f"{tiny_engines}@torch", "--source", clip, "--chunks", 12,
                 "--warmup", 2, "--block", 4, "--asks", 2, "--streams", 2, "--json", out, "--plot", png,
                 "--html", page)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["schema"] == SCHEMA and report["machine"]["cpu"]
    assert report["ceilings"]["flops_per_s"] > 0 and report["ceilings"]["bytes_per_s"] > 0
    assert [r["backend"]["backend"] for r in report["runs"]] == ["onnxruntime", "torch"]
    for r in report["runs"]:
        assert set(r["stages_ms"]) == set(STAGES)
        for stage in STAGES:
            s = r["stages_ms"][stage]
            assert s is not None and 0 < s["p50"] <= s["p90"] <= s["p99"] <= s["max"], (r["label"], stage)
        assert r["stages_ms"]["encode"]["n"] == 12 and len(r["push_ms_by_chunk"]) == 12
        assert r["end_to_end"]["chunks_per_s"] > 0 and r["end_to_end"]["first_token_ms"]["n"] == 2
        assert r["parallel"]["streams"] == 2 and r["parallel"]["chunks_per_s"] > 0
        assert r["memory"]["state_bytes_per_stream"] > 0 and r["memory"]["engine_bytes"] > 0
        for stage in ("encode", "ar_step", "prefill", "decode_token"):
            f = r["floor"][stage]
            assert f["flops"] > 0 and f["weight_bytes"] > 0 and f["bound"] in ("compute", "memory")
            assert f["x_floor"] >= 1, (stage, f)  # nothing runs faster than the machine allows
    assert report["runs"][0]["ratio_vs_first"]["encode"] == 1.0
    assert report["runs"][0]["floor"]["ar_step"]["flops"] == report["runs"][1]["floor"]["ar_step"]["flops"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    html = page.read_text()  # one self-contained page: the table, the plots inline, nothing fetched
    assert html.startswith("<!doctype html>") and "data:image/png;base64,iVBORw0KGgo" in html
    assert all(r["label"] in html for r in report["runs"]) and "push p50/p99" in html
    assert "http://" not in html and "https://" not in html


def test_refusals_name_the_problem(tmp_path, tiny_engines):
    other = tmp_path / "other"
    shutil.copytree(tiny_engines, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["config_hash"] = "0" * 16
    (other / "manifest.json").write_text(json.dumps(manifest))
    different = run("-e", tiny_engines, "-e", other, "--chunks", 2, "--warmup", 0)
    assert different.exit_code == 2 and "different models (weights" in different.output

    short = write_clip(tmp_path / "short.mp4", 2.0, fps=10, size=(64, 48))
    too_short = run("-e", tiny_engines, "--source", short, "--warmup", 5, "--chunks", 2)
    assert too_short.exit_code == 2 and "short.mp4: 2 chunks" in too_short.output and "--warmup" in too_short.output

    (tmp_path / "a-file").write_text("")  # the plot's directory is a file: unwritable, even for root
    blocked = run("-e", tiny_engines, "--chunks", 2, "--plot", tmp_path / "a-file" / "p.png")
    assert blocked.exit_code == 2 and "a-file/p.png: cannot write the plot" in blocked.output
