"""The HTML report of scored results: the summary table with its baselines, then per utterance the
ground-truth and generated mels side by side and audio players for the recording, l2s, and the two
baselines. One self-contained file (images inline) beside relative links to the wavs.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np

from l2s.evaluate.split import AUDIO_DIRS, SYSTEMS, summarize, summary_caption, summary_cells
from l2s.pipeline.generate import mel_of, read_generated
from l2s.plots import mel_pair

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.l { text-align: left; }
.clip { border-top: 1px solid #ddd; padding: 1em 0; }
audio { height: 28px; vertical-align: middle; }
"""


def _mel_png(target_MF: np.ndarray, predicted_MF: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    figure = mel_pair(target_MF, predicted_MF)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _summary_table(rows: list[dict]) -> str:
    summary = summarize(rows)
    header, body = summary_cells(summary)
    lines = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for cells in body:
        split, system, *numbers = (html.escape(c) for c in cells)
        tds = "".join(f"<td>{c}</td>" for c in numbers)
        lines.append(f"<tr><td class=l>{split}</td><td class=l>{system}</td>{tds}</tr>")
    caption = "".join(f"<li>{html.escape(line)}</li>" for line in summary_caption(summary))
    return "\n".join(lines) + f"</table><ul>{caption}</ul>"


def write_report(
    results: list[str], rows: list[dict], out: str | Path, per_split: int = 12
) -> Path:
    """`out` (an .html file): summary table, then up to `per_split` clips of each results folder."""
    out = Path(out)
    scores = {(r["id"], r["system"]): r for r in rows}
    parts = [
        "<!doctype html><meta charset=utf-8><title>l2s report</title>",
        f"<style>{STYLE}</style><h1>l2s report</h1>",
        "<p>Every system is scored against the clip's recording, and all but the recording are "
        "vocoded by Griffin-Lim. <b>recording</b>: the recording itself (the bound; its WER is the "
        "recognizer's own); <b>gt_mel</b>: the ground-truth mel (the vocoder's ceiling); "
        "<b>mean_mel</b>: a constant mean-mel predictor (the floor). Each metric is averaged over "
        "the clips where every system has it.</p>",
        _summary_table(rows),
    ]
    for folder in results:
        records = read_generated(folder, limit=per_split)
        if not records:
            continue
        parts.append(f"<h2>{html.escape(records[0]['split'])} — {html.escape(folder)}</h2>")
        parts.append(f"<p>checkpoint {html.escape(records[0]['checkpoint'])}</p>")
        for record in records:
            clip = record["id"]
            mine = scores.get((clip, "l2s"), {})
            numbers = ", ".join(
                f"{m} {mine[m]:.3f}"
                for m in ("stoi", "estoi", "pesq_wb", "wer")
                if m in mine and mine[m] == mine[m]
            )
            players = []
            for name in SYSTEMS:
                wav = Path(folder) / AUDIO_DIRS[name] / f"{clip}.wav"
                if wav.exists():
                    src = html.escape(os.path.relpath(wav, out.parent))
                    players.append(f"{name} <audio controls preload=none src='{src}'></audio>")
            png = _mel_png(mel_of(record, "target_mel"), mel_of(record, "mel"))
            hypothesis = mine.get("hypothesis")
            heard = f"<br>ASR heard: <i>{html.escape(hypothesis)}</i>" if hypothesis else ""
            parts.append(
                f"<div class=clip><b>{html.escape(clip)}</b> — {html.escape(record['transcript'] or '')}"
                f"{heard}<br>l2s: {numbers}; voice: {html.escape(record['speaker_source'])}<br>"
                f"<img src='data:image/png;base64,{png}'><br>{' &nbsp; '.join(players)}</div>"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    return out
