import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from tubelet.config.loader import from_dict
from tubelet.errors import CheckpointError, ConfigError
from tubelet.methods import build_method
from tubelet.methods import RunContext
from tubelet.methods.backbone import load_backbone_weights
from tubelet.methods.supervised import Supervised, soft_target_cross_entropy


class TinyBackbone(nn.Module):
    """Mean-pooled linear features: enough to test the objective in isolation."""

    def __init__(self, num_classes=4, dim=6):
        super().__init__()
        self.num_classes, self.embed_dim, self.num_prefix_tokens = num_classes, dim, 0
        self.proj = nn.Linear(3, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x):
        return self.proj(x.flatten(2).transpose(1, 2))  # (B, T*H*W, D)

    def forward_head(self, tokens, pre_logits=False):
        pooled = tokens.mean(1)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_hard_labels_cross_entropy_with_smoothing_and_accuracy():
    torch.manual_seed(0)
    m = Supervised(TinyBackbone(), label_smoothing=0.1)
    video, label = torch.randn(5, 3, 2, 4, 4), torch.tensor([0, 1, 2, 3, 0])
    out = m({"video": video, "label": label})
    logits = m.backbone(video)
    # independent computation of smoothed CE: (1 - eps) * NLL + eps * mean over classes of -log p
    logp = logits.log_softmax(-1)
    ref = (0.9 * -logp[torch.arange(5), label] + 0.1 * -logp.mean(-1)).mean()
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert out["acc"].item() == pytest.approx((logits.argmax(-1) == label).float().mean().item())


def test_soft_labels_use_soft_target_cross_entropy():
    torch.manual_seed(0)
    m = Supervised(TinyBackbone())
    video = torch.randn(3, 3, 2, 4, 4)
    target = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    out = m({"video": video, "label": target})
    logits = m.backbone(video)
    ref = -(target * logits.log_softmax(-1)).sum(-1).mean()
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    # one-hot soft targets equal hard-label CE
    onehot = F.one_hot(torch.tensor([1, 2, 0]), 4).float()
    assert soft_target_cross_entropy(logits, onehot).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([1, 2, 0])).item(), rel=1e-6)


def test_repeated_sampling_is_flattened():
    torch.manual_seed(0)
    m = Supervised(TinyBackbone())
    video, label = torch.randn(2, 3, 3, 2, 4, 4), torch.tensor([[0, 0, 0], [1, 1, 1]])
    out = m({"video": video, "label": label})
    ref = F.cross_entropy(m.backbone(video.flatten(0, 1)), label.flatten())
    assert out["loss"].item() == pytest.approx(ref.item(), rel=1e-6)
    out2 = m({"video": video, "label": torch.tensor([0, 1])})  # one label per video
    assert out2["loss"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_head_dropout_only_in_training():
    torch.manual_seed(0)
    m = Supervised(TinyBackbone(), head_dropout=0.5)
    x = torch.randn(4, 3, 2, 4, 4)
    m.eval()
    assert torch.allclose(m.classify(x), m.backbone(x))
    m.train()
    assert not torch.allclose(m.classify(x), m.backbone(x))


def test_gradients_reach_backbone():
    m = Supervised(TinyBackbone())
    m({"video": torch.randn(2, 3, 2, 4, 4), "label": torch.tensor([0, 1])})["loss"].backward()
    assert m.backbone.proj.weight.grad.abs().sum() > 0


def test_checkpoint_loads_body_and_reinitialises_mismatched_head(tmp_path, caplog):
    src = TinyBackbone(num_classes=10)
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["decoder.weight"] = torch.zeros(2, 2)  # pre-training-only tensor, e.g. an MAE decoder
    path = tmp_path / "pre.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    dst = TinyBackbone(num_classes=4)
    head_before = dst.head.weight.clone()
    with caplog.at_level(logging.WARNING):
        info = load_backbone_weights(dst, str(path))
    assert torch.equal(dst.proj.weight, src.proj.weight)
    assert torch.equal(dst.head.weight, head_before)
    assert info.head_reinit == ["head.bias", "head.weight"] and info.ignored == ["decoder.weight"]
    assert info.prefix == "backbone." and "proj.weight" in info.loaded
    assert "head re-initialised" in caplog.text


def test_checkpoint_body_mismatch_is_an_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in TinyBackbone(dim=5).state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="proj.weight"):
        load_backbone_weights(TinyBackbone(dim=6), str(path))


def _recipe(**model):
    m = {"name": "vit_tiny", "num_classes": 8, "num_frames": 4, "img_size": 16,
         "overrides": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}}
    m.update(model)
    return from_dict({"model": m, "data": {"synthetic": {"num_classes": 8}}, "method": {"name": "supervised"}})


def test_build_from_recipe_with_vit():
    torch.manual_seed(0)
    m = build_method(_recipe())
    assert isinstance(m, Supervised) and m.backbone.num_classes == 8
    out = m({"video": torch.randn(2, 3, 4, 16, 16), "label": torch.tensor([1, 7])})
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert m.classify(torch.randn(2, 3, 4, 16, 16)).shape == (2, 8)


def test_build_from_vit_checkpoint_with_other_head(tmp_path):
    from tubelet.core.io import save_safetensors

    torch.manual_seed(0)
    pre = build_method(_recipe(num_classes=8)).backbone
    path = tmp_path / "backbone.safetensors"
    save_safetensors(pre.state_dict(), path)
    recipe = _recipe(num_classes=5, checkpoint=str(path))
    recipe.data.synthetic.num_classes = 5
    m = build_method(recipe)
    for k, v in pre.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(m.backbone.state_dict()[k], v), k
    heads = [v for k, v in m.backbone.state_dict().items() if k.startswith("head.") and v.ndim == 2]
    assert m.backbone.num_classes == 5 and heads and heads[0].shape[0] == 5


def test_class_count_mismatch_with_the_training_set_is_an_error():
    # the engine's run context carries the training set's class count (here: 6 against model.num_classes 8)
    with pytest.raises(ConfigError, match="num_classes"):
        build_method(_recipe(), RunContext(total_steps=1, num_classes=6))


def test_fit_refuses_a_model_with_another_class_count_than_the_synthetic_set(tmp_path):
    from tubelet.engine import fit

    recipe = _recipe()
    recipe.data.synthetic.num_classes = 6
    recipe.data.crop_size, recipe.data.num_frames, recipe.data.synthetic.size = 16, 4, 16
    recipe.run_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="6 classes"):
        fit(recipe)
