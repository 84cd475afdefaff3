"""Deformable DETR: deformable attention against explicit bilinear sampling, the Hungarian matcher against an
exhaustive search, the set loss against a hand computation, the model's shapes and priors, the frame data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tubelet.config import load_recipe
from tubelet.data.builder import build_dataset
from tubelet.data.synthetic import SyntheticSource, split_indices
from tubelet.errors import ConfigError
from tubelet.methods import build_method
from tubelet.methods.detr import HungarianMatcher, match_cost, postprocess, set_loss, sigmoid_focal_loss
from tubelet.models import create_model, get_model_config
from tubelet.models.deformable_detr import sine_positions
from tubelet.models.layers.deform_attn import MSDeformAttn, ms_deform_attn

TINY = ["model.overrides={dim: 32, heads: 2, points: 2, encoder_layers: 1, decoder_layers: 2, ffn_dim: 32, "
        "num_queries: 6}", "data.synthetic.num_videos=8", "data.synthetic.frames=4", "data.batch_size=2"]


# ---------------------------------------------------------------- deformable attention


def _bilinear(value: np.ndarray, h: int, w: int, x: float, y: float) -> np.ndarray:
    """Sample a (h*w, D) row-major map at normalised (x, y): pixel centres at (j + 0.5) / w, zeros outside."""
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = np.zeros(value.shape[1])
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            if 0 <= xi < w and 0 <= yi < h:
                out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * value[yi * w + xi]
    return out


def _explicit(value, shapes, loc, attn):
    """Eq. 3 point by point: value (B, S, M, D), loc (B, Q, M, L, K, 2), attn (B, Q, M, L, K) -> (B, Q, M*D)."""
    B, S, M, D = value.shape
    _, Q, _, L, K, _ = loc.shape
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    out = np.zeros((B, Q, M, D))
    for b, q, m, lvl, k in itertools.product(range(B), range(Q), range(M), range(L), range(K)):
        h, w = shapes[lvl]
        v = value[b, starts[lvl]:starts[lvl + 1], m]
        out[b, q, m] += attn[b, q, m, lvl, k] * _bilinear(v, h, w, *loc[b, q, m, lvl, k])
    return out.reshape(B, Q, M * D)


def test_deformable_attention_equals_explicit_bilinear_sampling():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2), (1, 3)]
    B, Q, M, D, K = 2, 3, 2, 3, 2
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=torch.float64)
    # locations partly outside [0, 1]: the zero padding is part of what is checked
    loc = torch.rand(B, Q, M, len(shapes), K, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    attn = torch.rand(B, Q, M, len(shapes), K, generator=g, dtype=torch.float64)
    got = ms_deform_attn(value, shapes, loc, attn)
    want = _explicit(value.numpy(), shapes, loc.numpy(), attn.numpy())
    assert got.shape == (B, Q, M * D)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


def test_the_module_is_eq_3_offsets_in_level_pixels_and_a_softmax_over_levels_and_points():
    torch.manual_seed(0)
    shapes = [(4, 4), (2, 3)]
    C, M, L, K, B, Q = 8, 2, 2, 3, 1, 4
    attn = MSDeformAttn(C, L, M, K).double()
    for lin in (attn.sampling_offsets, attn.attention_weights):  # zero-initialised weights: make them matter
        torch.nn.init.normal_(lin.weight, std=0.3)
    query = torch.randn(B, Q, C, dtype=torch.float64)
    ref = torch.rand(B, Q, 2, dtype=torch.float64)
    value = torch.randn(B, sum(h * w for h, w in shapes), C, dtype=torch.float64)
    got = attn(query, ref, value, shapes)
    # the same thing from the projections, written out
    v = attn.value_proj(value).view(B, -1, M, C // M).detach().numpy()
    off = attn.sampling_offsets(query).view(B, Q, M, L, K, 2).detach().numpy()
    logits = attn.attention_weights(query).view(B, Q, M, L * K).detach().numpy()
    a = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).reshape(B, Q, M, L, K)
    loc = np.empty_like(off)
    for lvl, (h, w) in enumerate(shapes):
        loc[:, :, :, lvl, :, 0] = ref.numpy()[:, :, None, None, 0] + off[:, :, :, lvl, :, 0] / w
        loc[:, :, :, lvl, :, 1] = ref.numpy()[:, :, None, None, 1] + off[:, :, :, lvl, :, 1] / h
    want = attn.output_proj(torch.from_numpy(_explicit(v, shapes, loc, a))).detach().numpy()
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-9, atol=1e-10)
    # the sampling locations are differentiable: the offsets learn
    got.sum().backward()
    assert attn.sampling_offsets.weight.grad.abs().sum() > 0
    # the paper's start: uniform weights over the L K points, head m's points along direction 2 pi m / M
    fresh = MSDeformAttn(C, L, M, K)
    start = fresh.attention_weights(query.float()).view(B, Q, M, L * K).softmax(-1)
    np.testing.assert_allclose(start.detach().numpy(), 1 / (L * K), rtol=1e-6)
    bias = fresh.sampling_offsets.bias.view(M, L, K, 2)
    torch.testing.assert_close(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(bias[1, 1], torch.tensor([[-1.0, 0.0], [-2.0, 0.0], [-3.0, 0.0]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="built for 2 levels got 1"):
        attn(query, ref, value[:, :16], shapes[:1])


# ---------------------------------------------------------------- matcher and loss


def _giou(a, b):
    """GIoU of two cxcywh boxes, written out."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def _cost(logit, box, label, target, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit[label]))
    pos = alpha * (1 - p) ** gamma * -math.log(p)
    neg = (1 - alpha) * p ** gamma * -math.log(1 - p)
    return 2 * (pos - neg) + 5 * float(np.abs(box - target).sum()) - 2 * _giou(box, target)


def _random_boxes(rng, n):
    c = rng.uniform(0.2, 0.8, (n, 2))
    return np.concatenate([c, rng.uniform(0.05, 0.4, (n, 2))], 1)


@pytest.mark.parametrize("seed,Q,n", [(0, 5, 3), (1, 4, 4), (2, 6, 2), (3, 3, 1), (4, 5, 0), (5, 3, 5)])
def test_hungarian_matching_equals_an_exhaustive_search(seed, Q, n):
    rng = np.random.default_rng(seed)
    K = 2
    logits, boxes = rng.normal(0, 2, (Q, K)), _random_boxes(rng, Q)
    labels, targets = rng.integers(0, K, n), _random_boxes(rng, n)
    cost = np.array([[_cost(logits[q], boxes[q], labels[j], targets[j]) for j in range(n)] for q in range(Q)])
    cost = cost.reshape(Q, n)
    np.testing.assert_allclose(match_cost(torch.tensor(logits), torch.tensor(boxes), torch.tensor(labels),
                                          torch.tensor(targets)).numpy(), cost, rtol=1e-5, atol=1e-5)
    # every injective assignment of the min(Q, n) boxes or queries, by brute force
    if n <= Q:
        best = min(itertools.permutations(range(Q), n), key=lambda qs: sum(cost[q, j] for j, q in enumerate(qs)))
        want = sorted(zip(best, range(n)))
    else:
        best = min(itertools.permutations(range(n), Q), key=lambda js: sum(cost[q, j] for q, j in enumerate(js)))
        want = sorted(zip(range(Q), best))
    # a second image with other boxes in the same batch: costs are computed batched, assignments per image
    M = max(n, 2)
    lab = np.zeros((2, M), np.int64)
    tgt = np.full((2, M, 4), 0.5)
    mask = np.zeros((2, M), bool)
    lab[1, :n], tgt[1, :n], mask[1, :n] = labels, targets, True
    lab[0, :2], tgt[0, :2], mask[0, :2] = [0, 1], _random_boxes(rng, 2), True
    matcher = HungarianMatcher()
    out = matcher(torch.tensor(np.stack([rng.normal(size=(Q, K)), logits])), torch.tensor(np.stack([boxes, boxes])),
                  torch.tensor(lab), torch.tensor(tgt), torch.tensor(mask))
    q, j = out[1]
    assert sorted(zip(q.tolist(), j.tolist())) == want
    assert len(out[0][0]) == min(Q, 2)


def test_set_loss_is_the_focal_l1_and_giou_sums_over_the_matched_boxes_divided_by_their_number():
    logits = torch.tensor([[[3.0], [-1.0], [0.5]]])
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.5, 0.5]]])
    targets = torch.tensor([[[0.72, 0.58, 0.3, 0.25], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.zeros(1, 2, dtype=torch.int64)
    mask = torch.tensor([[True, False]])
    out = set_loss({"logits": logits, "boxes": boxes}, labels, targets, mask, HungarianMatcher(), num_boxes=1.0)
    # query 1 is the box next to the target: it is the match whatever its score
    onehot = torch.tensor([[[0.0], [1.0], [0.0]]])
    p = logits.sigmoid()
    fl = torch.where(onehot > 0, 0.25 * (1 - p) ** 2 * -torch.log(p), 0.75 * p ** 2 * -torch.log(1 - p)).sum()
    torch.testing.assert_close(out["loss_ce"], fl)
    torch.testing.assert_close(sigmoid_focal_loss(logits, onehot).sum(), fl)
    torch.testing.assert_close(out["loss_bbox"], torch.tensor(0.02 + 0.02 + 0.0 + 0.05))
    torch.testing.assert_close(out["loss_giou"], torch.tensor(1 - _giou([0.7, 0.6, 0.3, 0.2], [0.72, 0.58, 0.3, 0.25]),
                                                              dtype=torch.float32))
    halved = set_loss({"logits": logits, "boxes": boxes}, labels, targets, mask, HungarianMatcher(), num_boxes=2.0)
    torch.testing.assert_close(halved["loss_bbox"], out["loss_bbox"] / 2)


def test_postprocess_takes_the_top_k_of_all_query_class_scores():
    logits = torch.tensor([[[0.0, 2.0], [1.0, -3.0], [3.0, 0.5]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    b, s, lab, keep = postprocess({"logits": logits, "boxes": boxes}, top_k=3)
    assert keep.all()  # no NMS unless asked
    torch.testing.assert_close(s, torch.tensor([[3.0, 2.0, 1.0]]).sigmoid())
    assert lab.tolist() == [[0, 1, 0]]
    torch.testing.assert_close(b[0], torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.4, 0.4, 0.6, 0.6], [0.0, 0.0, 0.5, 0.5]]))


# ---------------------------------------------------------------- model


def test_the_registered_variants_are_the_papers():
    r50 = get_model_config("deformable_detr_r50")
    assert (r50.encoder_layers, r50.decoder_layers, r50.num_queries, r50.dim, r50.levels, r50.points, r50.heads) == \
        (6, 6, 500, 256, 4, 4, 8)
    assert r50.backbone == "resnet50_image"
    tiny = get_model_config("deformable_detr_r18_tiny")
    assert tiny.backbone == "resnet18_image" and tiny.num_queries < 50


def test_the_model_gives_boxes_and_logits_per_decoder_layer_on_four_levels():
    torch.manual_seed(0)
    m = create_model("deformable_detr_r18_tiny", dim=32, heads=2, encoder_layers=1, decoder_layers=3, ffn_dim=32,
                     num_queries=7, num_classes=2).eval()
    x = torch.randn(2, 3, 64, 96)
    maps = m.levels(x)
    assert [tuple(f.shape[-2:]) for f in maps] == [(8, 12), (4, 6), (2, 3), (1, 2)]  # strides 8, 16, 32, 64
    out = m(x)
    assert out["logits"].shape == (2, 7, 2) and out["boxes"].shape == (2, 7, 4) and len(out["aux"]) == 2
    assert all(a["boxes"].shape == (2, 7, 4) for a in out["aux"])
    assert (out["boxes"] > 0).all() and (out["boxes"] < 1).all()
    # the focal prior and the box head's start: boxes at the reference points, sigmoid(-2) in size
    torch.testing.assert_close(m.class_embed.bias, torch.full((2,), -math.log(99.0)))
    assert abs(-math.log(99.0) + 4.595) < 1e-3
    ref = m.reference_points(m.query_embed.weight[:, :32]).sigmoid()
    torch.testing.assert_close(out["boxes"][0, :, :2], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["boxes"][0, :, 2:], torch.full((7, 2), 1 / (1 + math.e ** 2)))
    # sine positions: y in the first half, x in the second, on normalised pixel centres
    pe = sine_positions(2, 3, 8)
    torch.testing.assert_close(pe[4, 0], torch.tensor(math.sin(2 * math.pi * 1.5 / 2)))
    torch.testing.assert_close(pe[4, 4], torch.tensor(math.sin(2 * math.pi * 1.5 / 3)))
    with pytest.raises(ValueError, match="not a 2-D ResNet"):
        create_model("deformable_detr_r18_tiny", backbone="vit_tiny")


# ---------------------------------------------------------------- data and method


def test_frame_boxes_are_the_synthetic_objects_normalised_and_flipped_with_the_frame():
    r = load_recipe("deformable_detr_synthetic", TINY + ["data.augment.hflip=0.0", "data.frame_boxes.min_size=0"])
    ds = build_dataset(r.data, "train", seed=0)
    n_train = len(split_indices(r.data.synthetic, "train"))
    assert len(ds) == n_train * 4
    clip = SyntheticSource(r.data.synthetic).clip(1)
    s = ds[4 + 2]  # clip 1, frame 2
    present = clip.ids[2] >= 0
    xyxy = clip.boxes[2][present] / 64.0
    want = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2, xyxy[:, 2] - xyxy[:, 0],
                     xyxy[:, 3] - xyxy[:, 1]], 1)
    n = int(present.sum())
    assert s["image"].shape == (3, 64, 64) and s["boxes"].shape == (4, 4)
    assert s["box_mask"].tolist() == [True] * n + [False] * (4 - n) and s["labels"].tolist() == [0] * 4
    np.testing.assert_allclose(s["boxes"][:n].numpy(), want, rtol=1e-6)
    mean, std = torch.tensor(r.data.mean)[:, None, None], torch.tensor(r.data.std)[:, None, None]
    torch.testing.assert_close(s["image"], (torch.from_numpy(clip.frames[2]).permute(2, 0, 1) / 255 - mean) / std)
    flipped = build_dataset(load_recipe("deformable_detr_synthetic", TINY + ["data.augment.hflip=1.0",
                                                                              "data.frame_boxes.min_size=0"]).data,
                            "train")[6]
    torch.testing.assert_close(flipped["image"], s["image"].flip(-1))
    np.testing.assert_allclose(flipped["boxes"][:n, 0].numpy(), 1 - want[:, 0], rtol=1e-6)
    assert len(build_dataset(r.data, "val")) == len(split_indices(r.data.synthetic, "val")) * 4
    with pytest.raises(ConfigError, match="max_objects=3 exceeds data.frame_boxes.max_boxes=2"):
        build_dataset(load_recipe("deformable_detr_synthetic", TINY + ["data.frame_boxes.max_boxes=2"]).data, "train")
    from tubelet.errors import DataError

    with pytest.raises(DataError, match="frame_boxes source '/x/y' is neither 'synthetic' nor a folder"):
        build_dataset(load_recipe("deformable_detr_synthetic", TINY + ["data.train=/x/y"]).data, "train")


def test_the_method_sums_the_loss_of_every_decoder_layer_and_learns_on_a_batch():
    r = load_recipe("deformable_detr_synthetic", TINY)
    torch.manual_seed(0)
    method = build_method(r)
    ds = build_dataset(r.data, "train", seed=0)
    batch = torch.utils.data.default_collate([ds[0], ds[5]])
    method.eval()  # no dropout: the two passes below see the same outputs
    out = method(batch)
    assert set(out) == {"loss", "loss_ce", "loss_bbox", "loss_giou", "matched_iou"}
    det = method.detr(batch["image"])
    n = float(batch["box_mask"].sum())
    want = sum(2 * t["loss_ce"] + 5 * t["loss_bbox"] + 2 * t["loss_giou"]
               for t in (set_loss(layer, batch["labels"], batch["boxes"], batch["box_mask"], method.matcher, n)
                         for layer in [det, *det["aux"]]))
    torch.testing.assert_close(out["loss"], want)
    # the paper's 0.1x learning rates: the backbone, every sampling-offset projection, the reference points
    scales = method.lr_scales()
    assert scales["detr.backbone.conv1.weight"] == r.method.backbone_lr_scale == 1.0  # the recipe's scratch backbone
    assert scales["detr.reference_points.weight"] == 0.1
    assert scales["detr.decoder.0.cross_attn.sampling_offsets.weight"] == 0.1 and "detr.class_embed.bias" not in scales
    method.train()
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss = method(batch)["loss"]
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(method(batch)["loss"]) < first
    with pytest.raises(ConfigError, match="is not a Deformable DETR"):
        build_method(load_recipe("deformable_detr_synthetic", ["model.name=resnet18_image"]))


def test_the_optimizer_applies_the_methods_lr_scales_and_refuses_unknown_names():
    from tubelet.engine.optim import param_groups

    method = build_method(load_recipe("deformable_detr_synthetic", TINY + ["method.backbone_lr_scale=0.5"]))
    groups = {(g["weight_decay"], g["lr_scale"]): set(g["names"]) for g in param_groups(method, 1e-4)}
    assert "detr.backbone.conv1.weight" in groups[(1e-4, 0.5)]
    assert "detr.encoder.0.attn.sampling_offsets.weight" in groups[(1e-4, 0.1)]
    assert "detr.class_embed.weight" in groups[(1e-4, 1.0)]
    method.lr_scales = lambda: {"detr.nothing": 0.1}
    with pytest.raises(ConfigError, match=r"lr_scales\(\) names parameters it does not train: \['detr.nothing'\]"):
        param_groups(method, 1e-4)


def test_an_imagenet_resnet_file_loads_into_the_backbone_and_a_partial_detector_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    from tubelet.errors import CheckpointError

    resnet = create_model("resnet18_image")  # with its classifier, as ImageNet files are
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    over = TINY + [f"model.checkpoint={tmp_path / 'r18.safetensors'}"]
    method = build_method(load_recipe("deformable_detr_synthetic", over))
    report = method.detr.load_report
    assert len(report.loaded) == len([k for k in resnet.state_dict() if not k.startswith("fc.")])
    torch.testing.assert_close(method.detr.backbone.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert "class_embed.bias" in report.new and report.ignored == []
    torch.testing.assert_close(method.detr.class_embed.bias, torch.full((1,), -math.log(99.0)))
    state = {k: v for k, v in method.detr.state_dict().items() if k != "class_embed.bias"}
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match=r"partial.safetensors: weights do not fit DeformableDETR(.|\n)*class_embed"):
        build_method(load_recipe("deformable_detr_synthetic", TINY + [f"model.checkpoint={tmp_path / 'partial.safetensors'}"]))


def _mot_folder(root, name="SEQ-01", frames=3):
    from PIL import Image

    seq = root / name
    (seq / "img1").mkdir(parents=True)
    (seq / "gt").mkdir()
    for t in range(frames):
        Image.fromarray(np.full((20, 40, 3), 30 * t, np.uint8)).save(seq / "img1" / f"{t + 1:06d}.png")
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nimDir=img1\nframeRate=10\nseqLength={frames}\n"
                                     "imWidth=40\nimHeight=20\n")
    # frame 1: a pedestrian and a static person (an ignore region, not a target); frame 2: a pedestrian
    # below the visibility bound; frame 3: an unflagged pedestrian
    (seq / "gt" / "gt.txt").write_text("1,1,4,2,10,8,1,1,1.0\n1,2,20,5,6,6,1,7,1.0\n2,1,6,2,10,8,1,1,0.1\n"
                                       "3,1,8,2,10,8,0,1,1.0\n")
    return seq


def test_frame_boxes_read_mot_challenge_targets_under_the_benchmarks_rules(tmp_path):
    seq = _mot_folder(tmp_path)
    over = TINY + [f"data.train={tmp_path}", "data.augment.hflip=0.0", "data.frame_boxes.min_visibility=0.5",
                   "data.frame_boxes.min_size=0"]
    ds = build_dataset(load_recipe("deformable_detr_synthetic", over).data, "train")
    assert len(ds) == 3
    s = ds[0]
    assert s["box_mask"].tolist() == [True, False, False, False] and s["image"].shape == (3, 64, 64)
    torch.testing.assert_close(s["boxes"][0], torch.tensor([9 / 40, 6 / 20, 10 / 40, 8 / 20]))
    assert not ds[1]["box_mask"].any() and not ds[2]["box_mask"].any()
    frame, _, _ = ds.raw(2)
    assert frame.shape == (20, 40, 3) and int(frame[0, 0, 0]) == 60
    one = build_dataset(load_recipe("deformable_detr_synthetic", TINY + [f"data.train={seq}"]).data, "train")
    assert len(one) == 3
    (tmp_path / "empty").mkdir()
    from tubelet.errors import DataError

    with pytest.raises(DataError, match="no MOT sequence folder"):
        build_dataset(load_recipe("deformable_detr_synthetic", TINY + [f"data.train={tmp_path / 'empty'}"]).data,
                      "train")
