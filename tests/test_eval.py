"""Multi-view testing against a hand computation; weight loading for evaluation."""

import math

import pytest
import torch
from toys import ToyViews, toy_recipe
from torch import nn

from tubelet.core.ckpt_format import save_checkpoint
from tubelet.core.io import save_safetensors
from tubelet.errors import CheckpointError, ConfigError
from tubelet.engine import evaluate
from tubelet.eval.multiview import confusion_matrix, topk_accuracy, view_scores
from tubelet.report import save_test_figures

K = 6


class Reader(nn.Module):
    """``classify`` returns the first K pixels of each view times a learnable scale."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.backbone = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.backbone.weight.fill_(scale)

    def classify(self, video):
        return video.flatten(1)[:, :K] * self.backbone.weight[0, 0]

    def forward(self, batch):
        return {"loss": self.classify(batch["video"]).sum()}


def _views(logits):
    """Views whose classify() output is ``logits`` (V, K): video (V, C=1, T=1, H=1, W=K)."""
    return torch.tensor(logits, dtype=torch.float32).view(len(logits), 1, 1, 1, K)


def _softmax(row):
    e = [math.exp(x) for x in row]
    return [x / sum(e) for x in e]


# 3 videos x 2 views. Video 0: one confident view for class 1, one mild view for class 0;
# the mean of softmaxes picks 1 (a mean of logits would too, but class 2 shows up in the top 2).
LOGITS = [
    [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.9, 0.0, 0.0, 0.0]],  # label 0: top1 wrong, in top 5
    [[0.0, 0.0, 3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0, 0.0, 0.0]],  # label 2: right
    [[5.0, 4.0, 3.0, 2.0, 1.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]],  # label 5: not even in top 5
]
LABELS = [0, 2, 5]


def _hand():
    scores = [[sum(col) / 2 for col in zip(*map(_softmax, views))] for views in LOGITS]
    ranked = [sorted(range(K), key=lambda c: -s[c]) for s in scores]
    top1 = sum(r[0] == y for r, y in zip(ranked, LABELS)) / 3
    top5 = sum(y in r[:5] for r, y in zip(ranked, LABELS)) / 3
    return scores, top1, top5, [r[0] for r in ranked]


def test_view_scores_topk_and_confusion_match_hand_computation():
    video = torch.stack([_views(v) for v in LOGITS])  # (B=3, V=2, 1, 1, 1, K)
    scores = view_scores(Reader().classify, video)
    hand_scores, top1, top5, preds = _hand()
    assert torch.allclose(scores, torch.tensor(hand_scores), atol=1e-6)
    labels = torch.tensor(LABELS)
    assert (top1, top5) == (1 / 3, 2 / 3)
    assert topk_accuracy(scores, labels, 1) == pytest.approx(top1)
    assert topk_accuracy(scores, labels, 5) == pytest.approx(top5)
    cm = confusion_matrix(scores.argmax(1), labels, K)
    expect = torch.zeros(K, K, dtype=torch.long)
    for y, p in zip(LABELS, preds):
        expect[y, p] += 1
    assert torch.equal(cm, expect) and cm[0, 1] == 1 and cm[2, 2] == 1 and cm[5, 0] == 1


def test_evaluate_loads_weights_and_writes_report(tmp_path):
    recipe = toy_recipe(tmp_path / "run")
    data = ToyViews(torch.stack([_views(v) for v in LOGITS]), torch.tensor(LABELS))
    hand_scores, top1, top5, preds = _hand()

    # method.safetensors with scale 1; the method starts with scale -1 (which would invert the ranking)
    save_safetensors(Reader(1.0).state_dict(), tmp_path / "method.safetensors")
    res = evaluate(recipe, tmp_path / "method.safetensors", method=Reader(-1.0), dataset=data, batch_size=2)
    assert res["weights"] == "method" and res["num_views"] == 2 and res["num_videos"] == 3
    assert res["top1"] == pytest.approx(top1) and res["top5"] == pytest.approx(top5)
    assert [p["pred"] for p in res["predictions"]] == preds
    assert [p["index"] for p in res["predictions"]] == [0, 1, 2]
    assert res["predictions"][1]["score"] == pytest.approx(max(hand_scores[1]), abs=1e-6)
    png = tmp_path / "run" / "report" / "confusion.png"
    assert save_test_figures(res) == png
    assert res["confusion_png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "run" / "report" / "test_results.json").is_file()

    # backbone.safetensors and a training checkpoint load as well
    save_safetensors(Reader(1.0).backbone.state_dict(), tmp_path / "backbone.safetensors")
    res = evaluate(recipe, tmp_path / "backbone.safetensors", method=Reader(-1.0), dataset=data)
    assert res["weights"] == "backbone" and res["top1"] == pytest.approx(top1)
    sd = {f"method.{k}": v for k, v in Reader(1.0).state_dict().items()}
    save_checkpoint({"state_dict": sd, "global_step": 1}, tmp_path / "step=000001.ckpt")
    res = evaluate(recipe, tmp_path / "step=000001.ckpt", method=Reader(-1.0), dataset=data)
    assert res["weights"] == "method" and res["top1"] == pytest.approx(top1)

    # with scale -1 (no checkpoint) the answer differs: the test would notice unloaded weights
    res = evaluate(recipe, None, method=Reader(-1.0), dataset=data)
    assert [p["pred"] for p in res["predictions"]] != preds


def test_evaluate_errors(tmp_path):
    recipe = toy_recipe(tmp_path / "run")
    data = ToyViews(torch.stack([_views(v) for v in LOGITS]), torch.tensor(LABELS))
    save_safetensors({"other.weight": torch.zeros(2)}, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="bad.safetensors: weights fit neither"):
        evaluate(recipe, tmp_path / "bad.safetensors", method=Reader(), dataset=data)
    with pytest.raises(CheckpointError, match="not found"):
        evaluate(recipe, tmp_path / "missing.ckpt", method=Reader(), dataset=data)
    with pytest.raises(ConfigError, match="classify"):
        evaluate(recipe, None, method=nn.Linear(1, 1), dataset=data)


def test_unreadable_test_videos_are_left_out_and_reported(tmp_path):
    from tubelet.data.mixing import BadSample

    class WithBad(ToyViews):
        def __getitem__(self, index):
            if index == 1:
                return BadSample(index, "clips/broken.mp4", "moov atom not found")
            return super().__getitem__(index)

    data = WithBad(torch.stack([_views(v) for v in LOGITS]), torch.tensor(LABELS))
    res = evaluate(toy_recipe(tmp_path / "run"), None, method=Reader(), dataset=data, batch_size=3)
    assert res["num_videos"] == 2 and [p["index"] for p in res["predictions"]] == [0, 2]
    assert res["bad_samples"] == [[1, "clips/broken.mp4", "moov atom not found"]]
    assert res["top1"] == 0.0 and res["top5"] == 0.5  # video 0: class 0 in top 5; video 2: not


def test_evaluate_runs_the_method_and_the_clips_on_the_trainers_device(tmp_path, monkeypatch):
    # `tubelet test` used to leave the method and every batch where they were, whatever
    # trainer.accelerator said. A recording stand-in for the device checks both moves.
    import importlib

    ev = importlib.import_module("tubelet.engine.evaluate")  # the module (the package exports the function)
    moved: list[str] = []
    real_to = torch.Tensor.to

    def tensor_to(self, *args, **kwargs):
        if args and args[0] == "marker":
            moved.append("batch")
            return real_to(self, "cpu", **kwargs)
        return real_to(self, *args, **kwargs)

    class Marker:
        type = "cpu"

        def __eq__(self, other):
            return other == "marker"

        __hash__ = object.__hash__

    marker = Marker()
    seen: list[str] = []
    monkeypatch.setattr(ev, "resolve_device", lambda accelerator: seen.append(accelerator) or marker)
    monkeypatch.setattr(torch.Tensor, "to", tensor_to)
    method = Reader(1.0)
    real_module_to = nn.Module.to
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: moved.append(f"method:{a[0] is marker}") or self)
    recipe = toy_recipe(tmp_path / "run")
    recipe.trainer.accelerator = "gpu"
    data = ToyViews(torch.stack([_views(v) for v in LOGITS]), torch.tensor(LABELS))
    evaluate(recipe, None, method=method, dataset=data, batch_size=2)
    monkeypatch.setattr(nn.Module, "to", real_module_to)
    assert seen == ["gpu"]
    assert "method:True" in moved and moved.count("batch") == 2  # two batches of 2 + 1 videos


def test_an_accelerator_that_is_not_there_is_a_config_error():
    from tubelet.engine.evaluate import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator=gpu"):
            resolve_device("gpu")
