"""Figures and the Markdown/HTML report from small synthetic results."""

from __future__ import annotations


import numpy as np
from PIL import Image

from koemo.evaluation.plots import plot_confusions, plot_modality, plot_snr_curve
from koemo.experiments.report import (
    fmt_ms,
    fmt_pt,
    markdown_table,
    render_markdown,
    write_report,
)

LABELS = ["neutral", "happy", "sad", "angry"]


def image_size(path):
    with Image.open(path) as im:
        im.load()
        return im.size, im.format


def test_confusion_figure(tmp_path):
    cm = np.array([[5, 1, 0, 0], [1, 4, 1, 0], [0, 2, 3, 1], [0, 0, 0, 6]])
    path = plot_confusions([("human text", cm), ("ASR text", cm.T), ("ASR + CR", cm)], LABELS,
                           tmp_path / "fig" / "confusion.png", suptitle="Figure 7")
    (w, h), kind = image_size(path)
    assert kind == "PNG" and w > 2 * h > 0  # three panels side by side
    assert not list((tmp_path / "fig").glob(".*.tmp"))


def test_modality_figure(tmp_path):
    per = {"neutral": {"audio": 0.52, "text": 0.48}, "sad": {"audio": 0.3, "text": 0.7}}
    (w, h), kind = image_size(plot_modality(per, tmp_path / "m.png", labels=LABELS))
    assert kind == "PNG" and w > 0 and h > 0
    # the bars follow the shares: other shares draw another picture of the same size
    other = {"neutral": {"audio": 0.9, "text": 0.1}, "sad": {"audio": 0.1, "text": 0.9}}
    plot_modality(other, tmp_path / "o.png", labels=LABELS)
    with Image.open(tmp_path / "m.png") as a, Image.open(tmp_path / "o.png") as b:
        assert a.size == b.size and np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).sum() > 0


def test_snr_curve_with_clean_point_and_cer_axis(tmp_path):
    points = [
        {"snr": None, "cer": 0.12, "asr": {"mean": 0.60, "std": 0.02}, "cr": {"mean": 0.62, "std": 0.01}},
        {"snr": 0, "cer": 0.55, "asr": {"mean": 0.45, "std": 0.03}, "cr": {"mean": 0.50, "std": 0.02}},
        {"snr": 10, "cer": 0.25, "asr": {"mean": 0.55, "std": 0.02}, "cr": {"mean": 0.58, "std": 0.02}},
        {"snr": 5, "cer": 0.35, "asr": {"mean": 0.50, "std": 0.02}},
    ]
    (w, h), kind = image_size(plot_snr_curve(points, tmp_path / "snr.png", reference=0.63))
    assert kind == "PNG" and w > h > 0


def test_formatting():
    assert fmt_ms(0.49523, 0.00619) == "0.4952 ± 0.0062"
    assert fmt_ms(None) == "–" and fmt_ms(float("nan"), 0.1) == "–"
    assert fmt_pt(0.4121 - 0.4952) == "-8.3"
    assert fmt_pt(0.0431) == "+4.3"
    table = markdown_table(["a", "b|c"], [["x", 1], ["y", 2.5]])
    assert table.splitlines() == ["| a | b\\|c |", "|:--|--:|", "| x | 1 |", "| y | 2.5 |"]


def synthetic_results(tmp_path):
    plot_confusions([("human text", np.eye(4, dtype=int) * 3)], LABELS, tmp_path / "figures" / "cm.png")
    s = {"mean": {"weighted_f1": 0.4952, "weighted_accuracy": 0.4989, "unweighted_accuracy": 0.47,
                  "macro_f1": 0.46, "ece": 0.1234, "nll": 1.5}, "std": {"weighted_f1": 0.0062, "weighted_accuracy": 0.005,
                                                                       "unweighted_accuracy": 0.01, "macro_f1": 0.011},
         "calibrated": {"ece": 0.0456, "nll": 1.2, "temperature": 1.7},
         "text_neutral": {"mean": 0.71, "std": 0.02}, "text_neutral_subset": {"mean": 0.66, "std": 0.03}}
    return {
        "title": "koemo on EmotionTTS",
        "meta": {"command": "koemo reproduce --recipe emotiontts --seeds 5", "machine": "2 cores",
                 "wall_time_s": 1500, "dataset": "emotiontts", "protocol": "speaker-sentence", "seeds": [0, 1]},
        "table3": [{"model": "shallow", "speech": "whisper-base-encoder", "text": "embeddinggemma-300m",
                    **s, "paper": 0.4952},
                   {"model": "text-only", "speech": None, "text": "fasttext-ko",
                    "mean": {"weighted_f1": 0.41}, "std": {"weighted_f1": 0.0085}}],
        "table4": [{"asr": "whisper-base", "model": "shallow", "gold": {"mean": 0.4952, "std": 0.0062},
                    "asr_trained": {"mean": 0.4121, "std": 0.01}, "cr": {"mean": 0.4550, "std": 0.009},
                    "recovered_share": (0.4550 - 0.4121) / (0.4952 - 0.4121), "cr_ece": 0.08,
                    "cr_calibrated": {"ece": 0.03}, "paper": {"asr_trained": 0.4121, "cr": 0.455}}],
        "asr": [{"condition": "whisper-base", "cer": 0.351, "wer": 0.638, "swer": 0.567, "n": 300}],
        "protocols": [
            {"protocol": "speaker-sentence", "model": "shallow", "mean": {"weighted_f1": 0.50}, "std": {"weighted_f1": 0.02}},
            {"protocol": "stratified", "model": "shallow", "mean": {"weighted_f1": 0.90}, "std": {"weighted_f1": 0.01}},
        ],
        "figures": [{"path": "figures/cm.png", "caption": "Confusion matrices"}],
        "commentary": "Our numbers are higher because EmotionTTS is acted speech.",
    }


def test_report_markdown_and_html(tmp_path):
    results = synthetic_results(tmp_path)
    path = write_report(results, tmp_path)
    text = path.read_text(encoding="utf-8")
    assert path.name == "REPORT.md"
    assert text.startswith("# koemo on EmotionTTS")
    assert "`koemo reproduce --recipe emotiontts --seeds 5`" in text and "25.0 min" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert ("| shallow | whisper-base-encoder | embeddinggemma-300m | 0.4952 ± 0.0062 | 0.4989 ± 0.0050 "
            "| 0.4700 ± 0.0100 | 0.4600 ± 0.0110 | 0.123 | 1.500 | 0.046 | 0.7100 ± 0.0200 | 0.6600 ± 0.0300 "
            "| 0.4952 |") in rows
    assert "| text-only | – | fasttext-ko | 0.4100 ± 0.0085 | – | – | – | – | – | – | – | – | – |" in rows
    # Table 4: change vs. Table 3, points and share of the drop recovered, calibration of CR
    assert ("| whisper-base | shallow | 0.4952 ± 0.0062 | 0.4121 ± 0.0100 (-8.3) | 0.4550 ± 0.0090 (-4.0) "
            "| +4.3 | 52% | 0.080 / 0.030 | 0.4121 / 0.4550 |") in rows
    assert "| whisper-base | 35.1% | 63.8% | 56.7% | 300 |" in rows
    assert "| stratified | shallow | 0.9000 ± 0.0100 | – | +40.0 |" in rows
    assert "![Confusion matrices](figures/cm.png)" in text
    assert "## Commentary" in text and "acted speech" in text
    html = (tmp_path / "REPORT.html").read_text(encoding="utf-8")
    assert '<img src="figures/cm.png"' in html and "<table>" in html and '>0.4952 ± 0.0062</td>' in html
    assert (tmp_path / "figures" / "cm.png").stat().st_size > 0


def test_reliability_figure(tmp_path):
    from koemo.calibration import reliability
    from koemo.evaluation.plots import plot_reliability

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4) * 0.3, size=200)
    y = rng.integers(0, 4, 200)
    r = reliability(probs, y)
    curve = {"confidence": r.confidence.tolist(), "accuracy": r.accuracy.tolist(), "count": r.count.tolist(),
             "ece": r.ece}
    (w, h), kind = image_size(plot_reliability({"title": "t", "raw": curve, "temperature-scaled": curve},
                                               tmp_path / "rel.png"))
    assert kind == "PNG" and h > w > 0


def test_report_leaves_out_missing_sections():
    text = render_markdown({"title": "t", "table3": []})
    assert "Table 3" not in text and "Table 4" not in text and "## Commentary" in text
    only_asr = render_markdown({"title": "t", "asr": [{"condition": "asr:x", "cer": 0.1, "wer": 0.2, "swer": 0.3,
                                                       "n": 5}]})
    assert "## ASR quality" in only_asr and "| asr:x | 10.0% | 20.0% | 30.0% | 5 |" in only_asr
    assert "## Table 3" not in only_asr and "## Weighted F1 against SNR" not in only_asr
    assert "## Protocols" not in only_asr and "## Figures" not in only_asr


def test_snr_table_orders_clean_first_and_shows_the_cr_gap():
    from koemo.experiments.report import snr_table

    text = snr_table([
        {"snr": 0.0, "cer": 0.69, "asr": {"mean": 0.45, "std": 0.02}, "cr": {"mean": 0.525, "std": 0.03}},
        {"snr": None, "cer": 0.083, "asr": {"mean": 0.65, "std": 0.02}, "cr": {"mean": 0.68, "std": 0.02},
         "gold": {"mean": 0.683, "std": 0.03}},
        {"snr": 10.0, "cer": 0.14, "asr": {"mean": 0.61, "std": 0.04}},
    ])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "SNR" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["clean", "10", "0"]
    assert "+3.0" in rows[0] and "+7.5" in rows[2] and "69.0%" in rows[2]
    assert rows[1].rstrip(" |").endswith("–")  # no CR point: no gap
    assert "## Weighted F1 against SNR" in render_markdown({"title": "t", "snr": [{"snr": None, "cer": 0.1}]})
