"""A self-contained HTML heatmap of one explanation.

Why: a person should see at a glance which part of the prompt drove the answer. Each feature
is shaded by its score relative to the largest absolute score: green raises the answer's
probability, red lowers it; hovering shows the number. No scripts, no external assets.
"""

from __future__ import annotations

import html
from typing import Any

from explainers.features import PreparedPrompt


def _color(score: float, scale: float) -> str:
    alpha = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    rgb = "22,163,74" if score >= 0 else "220,38,38"
    return f"rgba({rgb},{alpha * 0.85:.3f})"


def render_heatmap(prompt: PreparedPrompt, seq_attr: list[float], *, method: str,
                   granularity: str, response: str, faithfulness: dict[str, Any]) -> str:
    """The explanation as an HTML page (a string)."""
    scale = max((abs(s) for s in seq_attr), default=0.0)
    blocks = []
    for seg_index, seg in enumerate(prompt.segments):
        feats = sorted(
            ((f.char_span, score) for f, score in zip(prompt.features, seq_attr, strict=True)
             if (f.message if f.message is not None else 0) == seg_index),
            key=lambda item: item[0][0])
        parts, cursor = [], 0
        for (a, b), score in feats:
            if a < cursor:
                continue
            parts.append(html.escape(seg.text[cursor:a]))
            parts.append(
                f'<span class="f" style="background:{_color(score, scale)}" '
                f'title="{score:+.3f}">{html.escape(seg.text[a:b])}</span>')
            cursor = b
        parts.append(html.escape(seg.text[cursor:]))
        role = f'<div class="role">{html.escape(seg.role)}</div>' if seg.role else ""
        blocks.append(f'<div class="msg">{role}<div class="text">{"".join(parts)}</div></div>')
    verdict = ("beats" if faithfulness.get("beats_random") else "does not beat")
    faith = (f"Removing the top {faithfulness.get('k')} feature(s) lowers the answer's "
             f"log-probability by {faithfulness.get('topk_drop', 0):.2f}; removing as many at "
             f"random, by {faithfulness.get('random_drop_mean', 0):.2f} on average "
             f"({verdict} random).")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Explanation: {html.escape(method)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 860px; margin: 2em auto; color: #111; }}
.msg {{ border: 1px solid #ddd; border-radius: 6px; padding: .6em .8em; margin: .6em 0; }}
.role {{ font-size: .75em; text-transform: uppercase; color: #666; margin-bottom: .3em; }}
.text {{ white-space: pre-wrap; line-height: 1.9; }}
.f {{ border-radius: 3px; padding: 1px 0; }}
.answer {{ background: #f4f4f5; border-radius: 6px; padding: .6em .8em; white-space: pre-wrap; }}
.legend span {{ padding: 2px 8px; border-radius: 3px; margin-right: .5em; }}
.meta {{ color: #555; font-size: .9em; }}
</style></head><body>
<h2>Which parts of the prompt drove the answer</h2>
<p class="meta">method <b>{html.escape(method)}</b>, granularity <b>{html.escape(granularity)}</b></p>
<p class="legend"><span style="background:rgba(22,163,74,.7)">raises the answer's probability</span>
<span style="background:rgba(220,38,38,.7)">lowers it</span></p>
{''.join(blocks)}
<h3>Answer</h3>
<div class="answer">{html.escape(response)}</div>
<p class="meta">{html.escape(faith)}</p>
</body></html>
"""
