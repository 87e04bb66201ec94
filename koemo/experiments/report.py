"""The results report: ``results/REPORT.md`` (and ``REPORT.html``) from a results dict.

Layout (each section is left out when its data is missing)::

    # title
    run facts: command, machine, wall time, dataset, protocol, seeds
    ## Table 3: human transcripts            model | speech | text | weighted F1 | weighted acc | UA | macro F1 | paper F1
    ## Table 4: ASR transcripts at test time  ASR | model | human text | ASR-trained (change) | CR (change) | recovered
    ## ASR quality                            condition | CER | WER | sWER | utterances
    ## Weighted F1 against SNR                SNR | CER | ASR-trained | CR | human-trained | CR - ASR-trained
    ## Protocols and leakage                  protocol | model | weighted F1 | vs. main protocol
    ## Figures                                embedded PNGs with captions
    ## Commentary                             free Markdown

The results dict (what ``koemo reproduce`` writes as ``results/results.json``)::

    {"title": str, "meta": {"command", "machine", "wall_time_s", "dataset", "protocol", "seeds", ...},
     "table3": [{"model", "speech", "text", "mean": {metric: x}, "std": {metric: x}, "paper": f1?}],
     "table4": [{"asr", "model", "gold": {"mean", "std"}?, "asr_trained": {"mean", "std"},
                 "cr": {"mean", "std"}, "paper": {"asr_trained", "cr"}?}],
     "asr": [{"condition", "cer", "wer", "swer", "n"}],   # fractions
     "snr": [{"snr": dB or None (clean), "cer", "asr"/"cr"/"gold": {"mean", "std"}}],
     "protocols": [{"protocol", "model", "mean": {...}, "std": {...}}],
     "figures": [{"path": relative to the report, "caption"}],
     "commentary": markdown str}

Scores are fractions and printed with 4 decimals as ``mean ± std``; changes and recoveries are in
percentage points with one decimal, as in the paper's Table 4.
"""

from __future__ import annotations

import html as html_lib
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from koemo.paths import atomic_write_text

METRIC_NAMES = {
    "weighted_f1": "weighted F1",
    "weighted_accuracy": "weighted acc.",
    "unweighted_accuracy": "UA",
    "macro_f1": "macro F1",
}


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def fmt_ms(mean: float | None, std: float | None = None, digits: int = 4) -> str:
    """``0.4952 ± 0.0062`` (std left out when None)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return fmt(mean, digits) if std is None else f"{fmt(mean, digits)} ± {fmt(std, digits)}"


def fmt_pt(delta: float | None) -> str:
    """A difference of two fractions in percentage points, signed: ``-8.3``."""
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return "–"
    return f"{100 * delta:+.1f}"


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` is one of l/r/c per column (default: first
    column left, the rest right)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    marks = {"l": ":--", "r": "--:", "c": ":-:"}

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _score(row: Mapping, key: str = "weighted_f1") -> tuple[float | None, float | None]:
    mean = (row.get("mean") or {}).get(key)
    std = (row.get("std") or {}).get(key)
    return mean, std


def _f1_cell(cell: Mapping | None) -> str:
    return fmt_ms(cell.get("mean"), cell.get("std")) if cell else "–"


def table3(rows: Sequence[Mapping]) -> str:
    """The metrics on human text, calibration (raw ECE and NLL; ECE after a cross-fitted
    temperature) and, where the grid ran them, the text-neutral scores."""
    extra = any(r.get("text_neutral") or r.get("text_neutral_subset") for r in rows)
    headers = ["model", "speech", "text", *METRIC_NAMES.values(), "ECE", "NLL", "ECE (T)"]
    if extra:
        headers += ["text-neutral F1", "text-neutral clips of the main protocol"]
    headers.append("paper F1")
    out = []
    for r in rows:
        cal = r.get("calibrated") or {}
        row = [r.get("model", ""), r.get("speech") or "–", r.get("text") or "–",
               *(fmt_ms(*_score(r, k)) for k in METRIC_NAMES), fmt(_score(r, "ece")[0], 3),
               fmt(_score(r, "nll")[0], 3), fmt(cal.get("ece"), 3)]
        if extra:
            row += [_f1_cell(r.get("text_neutral")), _f1_cell(r.get("text_neutral_subset"))]
        out.append(row + [fmt(r.get("paper"))])
    return markdown_table(headers, out, "lll" + "r" * (len(headers) - 3))


def table4(rows: Sequence[Mapping]) -> str:
    """Change = F1 on ASR text minus F1 of the same fusion trained and tested on human text
    (Table 3); recovered = CR minus ASR-trained."""
    extra = any(r.get("cr_text_neutral") for r in rows)
    headers = ["ASR", "model", "human text (Table 3)", "trained on ASR text (change)",
               "with CR (change)", "recovered (pt)", "share of the drop recovered", "CR: ECE / ECE (T)"]
    if extra:
        headers += ["text-neutral: ASR-trained / CR"]
    headers.append("paper: ASR / CR")
    out = []
    for r in rows:
        gold = (r.get("gold") or {}).get("mean")
        asr, cr = r.get("asr_trained") or {}, r.get("cr") or {}
        asr_m, cr_m = asr.get("mean"), cr.get("mean")

        def with_change(cell: Mapping, m: float | None) -> str:
            text = fmt_ms(m, cell.get("std"))
            if m is not None and gold is not None:
                text += f" ({fmt_pt(m - gold)})"
            return text

        recovered = fmt_pt(cr_m - asr_m) if cr_m is not None and asr_m is not None else "–"
        paper = r.get("paper") or {}
        paper_text = (f"{fmt(paper.get('asr_trained'))} / {fmt(paper.get('cr'))}" if paper else "–")
        share = r.get("recovered_share")
        cal = (r.get("cr_calibrated") or {}).get("ece")
        row = [r.get("asr", ""), r.get("model", ""), fmt_ms(gold, (r.get("gold") or {}).get("std")),
               with_change(asr, asr_m), with_change(cr, cr_m), recovered,
               "–" if share is None else f"{100 * share:.0f}%", f"{fmt(r.get('cr_ece'), 3)} / {fmt(cal, 3)}"]
        if extra:
            row.append(f"{_f1_cell(r.get('asr_text_neutral'))} / {_f1_cell(r.get('cr_text_neutral'))}")
        out.append(row + [paper_text])
    return markdown_table(headers, out, "ll" + "r" * (len(headers) - 2))


def asr_table(rows: Sequence[Mapping]) -> str:
    headers = ["condition", "CER", "WER", "sWER", "utterances"]
    out = [[r.get("condition", ""), fmt_pct(r.get("cer")), fmt_pct(r.get("wer")), fmt_pct(r.get("swer")),
            r.get("n", "–")] for r in rows]
    return markdown_table(headers, out)


def snr_table(points: Sequence[Mapping]) -> str:
    """The SNR curve's numbers: CER and weighted F1 per training text, clean first, then by SNR."""
    headers = ["SNR (dB)", "CER", "trained on ASR text", "with CR", "trained on human text", "CR - ASR-trained (pt)"]
    ordered = sorted(points, key=lambda p: (p.get("snr") is not None, -(p.get("snr") or 0.0)))
    out = []
    for p in ordered:
        a, c, g = (p.get(k) or {} for k in ("asr", "cr", "gold"))
        gap = (c["mean"] - a["mean"]) if ("mean" in a and "mean" in c) else None
        out.append(["clean" if p.get("snr") is None else f"{p['snr']:g}", fmt_pct(p.get("cer")),
                    fmt_ms(a.get("mean"), a.get("std")), fmt_ms(c.get("mean"), c.get("std")),
                    fmt_ms(g.get("mean"), g.get("std")), fmt_pt(gap)])
    return markdown_table(headers, out, "l" + "r" * 5)


def protocol_table(rows: Sequence[Mapping], main: str | None = None) -> str:
    """Each row's weighted F1 and its difference from the same model under the ``main`` protocol."""
    base = {r.get("model"): _score(r)[0] for r in rows if r.get("protocol") == main}
    headers = ["protocol", "model", "weighted F1", "UA", f"vs. {main} (pt)" if main else "vs. main (pt)"]
    out = []
    for r in rows:
        m, s = _score(r)
        ref = base.get(r.get("model"))
        out.append([r.get("protocol", ""), r.get("model", ""), fmt_ms(m, s), fmt_ms(*_score(r, "unweighted_accuracy")),
                    fmt_pt(m - ref) if (m is not None and ref is not None and r.get("protocol") != main) else "–"])
    return markdown_table(headers, out, "ll" + "r" * 3)


def _meta_lines(meta: Mapping) -> list[str]:
    names = [("command", "Command"), ("machine", "Machine"), ("wall_time_s", "Wall time"),
             ("training_s", "Training (all folds, summed over processes)"),
             ("dataset", "Dataset"), ("protocol", "Main protocol"), ("seeds", "Seeds"), ("date", "Date")]
    lines = []
    for key, name in names:
        if key not in meta or meta[key] in (None, ""):
            continue
        value = meta[key]
        if key in ("wall_time_s", "training_s"):
            value = f"{float(value) / 60:.1f} min ({float(value):.0f} s)"
        elif key == "command":
            value = f"`{value}`"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        lines.append(f"- **{name}:** {value}")
    for key, value in meta.items():
        if key not in dict(names):
            lines.append(f"- **{key}:** {value}")
    return lines


def render_markdown(results: Mapping) -> str:
    """The report as Markdown text (see the module docstring for the layout)."""
    parts = [f"# {results.get('title', 'koemo results')}", ""]
    meta = results.get("meta") or {}
    if meta:
        parts += [*_meta_lines(meta), ""]
    if results.get("intro"):
        parts += [results["intro"].strip(), ""]
    if results.get("table3"):
        parts += ["## Table 3: trained and tested on human transcripts", "",
                  "Mean ± standard deviation over seeds (each seed: all folds' predictions pooled). "
                  "Weighted accuracy equals plain accuracy by definition (see `koemo/metrics.py`). "
                  "ECE: expected calibration error (15 bins) of the raw probabilities; ECE (T): after "
                  "temperature scaling, each fold scaled by the temperature fitted on the seed's other folds "
                  "(`koemo/calibration.py`). Text-neutral columns (where run): the text-neutral protocol, and "
                  "the main protocol's predictions of the clips whose sentence is read in several emotions, "
                  "both on the service (ASR) text for models that read text.",
                  "", table3(results["table3"]), ""]
    if results.get("table4"):
        parts += ["## Table 4: ASR transcripts at test time", "",
                  "Weighted F1; in brackets the change in points against the same fusion trained and tested "
                  "on human transcripts; *recovered* = CR minus ASR-trained.", "", table4(results["table4"]), ""]
    if results.get("asr"):
        parts += ["## ASR quality", "", asr_table(results["asr"]), ""]
    if results.get("snr"):
        parts += ["## Weighted F1 against SNR", "",
                  "Babble noise added to the recogniser's input only (the audio branch hears the clean clip); "
                  "all models tested on that recogniser's text.", "", snr_table(results["snr"]), ""]
    if results.get("protocols"):
        parts += ["## Protocols and leakage", "", protocol_table(results["protocols"], meta.get("protocol")), ""]
        if results.get("leakage_note"):
            parts += [results["leakage_note"].strip(), ""]
    if results.get("figures"):
        parts += ["## Figures", ""]
        for fig in results["figures"]:
            caption = fig.get("caption", "")
            parts += [f"![{caption}]({fig['path']})", "", f"*{caption}*" if caption else "", ""]
    parts += ["## Commentary", "", (results.get("commentary") or "_(to be written)_").strip(), ""]
    return "\n".join(parts)


def render_html(markdown_text: str, title: str = "koemo results") -> str:
    """The Markdown report as a standalone HTML page (markdown-it, which rich already installs)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}"
             "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html_lib.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n{body}</body></html>\n")


def write_report(results: Mapping, out_dir: str | Path, html: bool = True) -> Path:
    """Write ``REPORT.md`` (and ``REPORT.html``) into ``out_dir``; figure paths are relative to it."""
    out_dir = Path(out_dir)
    text = render_markdown(results)
    path = out_dir / "REPORT.md"
    atomic_write_text(path, text)
    if html:
        atomic_write_text(out_dir / "REPORT.html", render_html(text, results.get("title", "koemo results")))
    return path
