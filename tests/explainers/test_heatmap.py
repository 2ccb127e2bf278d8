"""The HTML heatmap's colours, numbers and faithfulness line (fast tier, no predictor).

Why on its own: the slow tests (tests/explainers/test_explain.py) only see that a green shade
is present for a real explanation; whether a lowering feature is red, how strongly each is
shaded, and what the faithfulness line says are the renderer's own logic.
"""

from __future__ import annotations

import re
from html import escape

from explainers.features import Feature, PreparedPrompt, Segment
from explainers.heatmap import render_heatmap

GREEN, RED = "22,163,74", "220,38,38"


def page(scores: list[float], faithfulness: dict) -> str:
    text = "Bob lives in Rome. Ann <likes> Oslo."
    spans = [(0, 18), (19, 36)]
    prompt = PreparedPrompt(ids=[1, 2, 3], segments=[Segment("user", text)], features=[
        Feature(text[a:b], (a, b), 0) for a, b in spans])
    return render_heatmap(prompt, scores, method="leave_one_out", granularity="sentence",
                          response="Rome & more", faithfulness=faithfulness)


def test_raising_is_green_lowering_is_red_shaded_by_size() -> None:
    html = page([2.0, -0.5], {"k": 1, "topk_drop": 2.0, "random_drop_mean": 0.75,
                             "beats_random": True})
    spans = re.findall(r'<span class="f" style="background:rgba\(([\d,]+),([\d.]+)\)" '
                       r'title="([^"]+)">([^<]*)</span>', html)
    assert spans == [(GREEN, "0.850", "+2.000", "Bob lives in Rome."),
                     (RED, "0.212", "-0.500", "Ann &lt;likes&gt; Oslo.")]
    assert "Rome &amp; more" in html and "<script" not in html  # escaped, no scripts
    assert escape("Removing the top 1 feature(s) lowers the answer's log-probability by "
                  "2.00; removing as many at random, by 0.75 on average (beats random).") in html


def test_faithfulness_line_says_when_it_does_not_beat_random() -> None:
    html = page([0.0, 0.0], {"k": 1, "topk_drop": 0.1, "random_drop_mean": 0.3,
                             "beats_random": False})
    assert "(does not beat random)" in html
    assert html.count("rgba(22,163,74,0.000)") == 2  # all-zero scores: no shade, no error
