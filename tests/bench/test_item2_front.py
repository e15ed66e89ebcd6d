"""bench.item2_front: one panel per judged size, the default named as such, and a one-line refusal of a missing file."""

import json

import pytest

from bench.item2_front import main, panels
from scu.config.schema import AUTO_BALANCE


def stat(x: float) -> dict:
    return {"mean": x, "std": 0.01, "n": 3}


def result(name: str, scu: dict, judged: bool = True) -> dict:
    arms = {"unregularized": {"size": "16000", "test": stat(6.9), "forgetting": stat(1.9)},
            "fixed_lambda=0.01": {"size": "16000", "test": stat(6.64), "forgetting": stat(0.76)},
            "fixed_lambda=0.03": {"size": "16000", "test": stat(6.63), "forgetting": stat(0.39)},
            name: {"size": "16000", "test": stat(8.09), "forgetting": stat(0.07)}}
    verdict = {"best_tuned_test": stat(6.6), "tolerance": 0.066, "forgetting_plain": 1.9, "held_out_met": False,
               "forgetting_met": True} if judged else None
    return {"scale": "cpu", "name": name, "scu": scu, "sizes": {"16000": {"arms": arms, "verdict": verdict},
                                                                 "pool": {"arms": {}, "verdict": None}}}


def test_each_judged_size_is_a_panel_and_the_default_is_named():
    todo = panels([result("default_auto", dict(AUTO_BALANCE)), result("other", {"law": "pi"})])
    assert [(scale, size, name, label) for scale, size, _, name, label in todo] == [
        ("cpu", "16000", "default_auto", "the default: law auto, S* 5%"), ("cpu", "16000", "other", "other")]


def test_the_judged_arm_is_drawn_under_its_own_label():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.item2_front import draw

    r = result("default_auto", dict(AUTO_BALANCE))
    r["sizes"]["16000"]["arms"]["prior_fit"] = {"size": "16000", "test": stat(6.65), "forgetting": stat(0.86)}
    fig, ax = plt.subplots()
    draw(ax, *panels([r])[0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    assert "the default: law auto, S* 5%" in labels and "target_s: auto (plain fit)" in labels
    assert "fixed λ grid" in labels and "plain LoRA" in labels


def test_it_draws_the_picture(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result("default_auto", dict(AUTO_BALANCE))))
    assert main([str(path), "--out", str(tmp_path / "front.png")]) == 0
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_or_unjudged_result_is_refused_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no such result.*run bench.setting_heldout"):
        main([str(tmp_path / "nope.json")])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result("x", {}, judged=False)))
    with pytest.raises(SystemExit, match="no verdict yet"):
        main([str(path), "--out", str(tmp_path / "front.png")])
    assert not (tmp_path / "front.png").exists()


def test_series_results_join_their_judged_arms_in_the_order_of_their_target():
    from bench.item2_front import series_points

    results = []
    for target, test in ((0.75, 6.65), (0.25, 7.05), (0.5, 6.74)):
        r = result(f"auto_target_{target}", {"target_s": target})
        r["sizes"]["16000"]["arms"][f"auto_target_{target}"]["test"] = stat(test)
        results.append(r)
    points = series_points(results)
    assert list(points) == [("cpu", "16000")]  # the pool has no arm of theirs
    assert [(t, a["test"]["mean"]) for t, a in points[("cpu", "16000")]] == [(0.25, 7.05), (0.5, 6.74), (0.75, 6.65)]
