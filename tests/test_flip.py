"""FLIP (methods/flip.py): masking, the loss, the logit scale, and training over processes."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tubelet.config.loader import from_dict
from tubelet.errors import ConfigError
from tubelet.methods import build_method
from tubelet.methods.flip import FLIP, FLIP_TEMPLATES, flip_loss

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

TINY_TEXT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def tiny_recipe(tmp_path=None, **method):
    """A video FLIP of a few thousand parameters on 8-frame 32 px synthetic clips (4x4x4 = 64 tokens)."""
    return {
        "model": {"name": "vit_tiny", "num_classes": 0, "num_frames": 8, "img_size": 32,
                  "overrides": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "pos_embed": "sincos",
                                "class_token": False}},
        "data": {"kind": "synthetic", "captions": True, "num_frames": 8, "sampling_rate": 4, "target_fps": 32.0,
                 "crop_size": 32, "test_short_side": 32, "batch_size": 8,
                 "augment": {"random_resized_crop": False, "short_side": [32, 32], "hflip": 0.5},
                 "synthetic": {"num_videos": 64, "num_classes": 8, "frames": 8, "size": 32, "max_objects": 1}},
        "method": {"name": "flip", "mask_ratio": 0.5, "embed_dim": 16, "text_overrides": TINY_TEXT, **method},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "weight_decay": 0.2, "betas": [0.9, 0.95]},
        "trainer": {"max_steps": 3, "num_threads": 1, "enable_progress_bar": False, "log_every_n_steps": 1,
                    "accelerator": "cpu", "checkpoint_every_n_steps": 3},
        "run_dir": str(tmp_path / "run") if tmp_path is not None else "runs/x",
    }


def image_flip(img_size: int, patch: int, ratio: float) -> FLIP:
    recipe = from_dict({
        "model": {"name": "vit_base_patch16_image", "num_frames": 1, "img_size": img_size, "num_classes": 0,
                  "overrides": {"patch_size": patch, "embed_dim": 16, "depth": 1, "num_heads": 2}},
        "data": {"captions": True},
        "method": {"name": "flip", "mask_ratio": ratio, "embed_dim": 8, "text_overrides": TINY_TEXT},
    })
    return build_method(recipe)


def tokens_entering_blocks(method: FLIP, video: torch.Tensor, captions: list[str]) -> int:
    seen = []
    hook = method.backbone.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        method({"video": video, "caption": captions})
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("img,patch,ratio,kept", [(224, 16, 0.5, 98), (224, 16, 0.75, 49), (224, 14, 0.5, 128),
                                                  (224, 14, 0.75, 64), (224, 16, 0.0, 196)])
def test_kept_tokens_enter_the_encoder_in_training_only(img, patch, ratio, kept):
    """196 patches at 224/16 keep 98 (50%) and 49 (75%); 256 at 224/14 keep 128 and 64. Only the kept
    tokens reach the blocks in training; evaluation always sees every token."""
    torch.manual_seed(0)
    method = image_flip(img, patch, ratio)
    image = torch.randn(2, 3, 1, img, img)
    caps = ["a cat", "a dog"]
    assert method.num_kept(image) == kept
    assert tokens_entering_blocks(method.train(), image, caps) == kept
    assert tokens_entering_blocks(method.eval(), image, caps) == (img // patch) ** 2
    # the embedding used by zero-shot, retrieval and probing has no masking argument at all
    assert "keep" not in " ".join(method.encode_video.__code__.co_varnames)


def test_activations_saved_for_backward_follow_the_kept_tokens():
    """What masking saves in memory (benchmarks/flip_speed.py): the vision tower's activations kept for
    backward shrink with the kept tokens (0.50x at 50%, 0.25x at 75%), the text tower's do not, and the
    parameters autograd also saves are not activations (counted with them, B/16 at batch 8 gave 0.69x
    at 50% instead of 0.54x)."""
    from tubelet.flops import saved_for_backward

    batch = {"video": torch.randn(2, 3, 1, 224, 224), "caption": ["a red disc", "a blue square moves"],
             "sample_seed": torch.arange(2)}
    saved = {}
    for ratio in (0.0, 0.5, 0.75):
        torch.manual_seed(0)
        method = image_flip(224, 16, ratio).train()
        saved[ratio] = saved_for_backward(method, batch, {"text": method.text})
        assert saved[ratio].parameters > 0
    vision = {r: s.activations - s.by_part["text"] for r, s in saved.items()}
    assert saved[0.0].by_part["text"] == saved[0.5].by_part["text"] == saved[0.75].by_part["text"] > 0
    assert 0.49 < vision[0.5] / vision[0.0] <= 0.505 and 0.24 < vision[0.75] / vision[0.0] <= 0.255


def test_video_tubelets_kept():
    method = build_method(from_dict(tiny_recipe()))
    video = torch.randn(2, 3, 8, 32, 32)
    assert tokens_entering_blocks(method.train(), video, ["a", "b"]) == 32  # 4x4x4 = 64 tubelets at 50%
    assert tokens_entering_blocks(method.eval(), video, ["a", "b"]) == 64


def reference_loss(zv: torch.Tensor, zt: torch.Tensor, s: float) -> float:
    """METHODS.md Sec. 6 step 4 written out with explicit sums over the pair matrix."""
    B = zv.shape[0]
    logits = [[s * float(zv[i] @ zt[j]) for j in range(B)] for i in range(B)]
    rows = sum(math.log(sum(math.exp(logits[i][j]) for j in range(B))) - logits[i][i] for i in range(B)) / B
    cols = sum(math.log(sum(math.exp(logits[i][j]) for i in range(B))) - logits[j][j] for j in range(B)) / B
    return 0.5 * (rows + cols)


def test_loss_equals_independent_computation_and_is_symmetric():
    torch.manual_seed(0)
    zv = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=-1)
    zt = F.normalize(torch.randn(6, 5, dtype=torch.float64), dim=-1)
    s = torch.tensor(14.2857)
    got = flip_loss(zv, zt, s).item()
    assert got == pytest.approx(reference_loss(zv, zt, 14.2857), rel=1e-6)
    assert flip_loss(zt, zv, s).item() == pytest.approx(got, rel=1e-6)  # towers swapped
    # CLIP's formula with cross entropy agrees too
    logits = s * zv.float() @ zt.float().t()
    ce = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6)))
    assert got == pytest.approx(ce.item(), rel=1e-5)


def test_loss_is_ln_batch_when_embeddings_are_equal():
    z = F.normalize(torch.ones(16, 8), dim=-1)
    for s in (1.0, 14.2857, 100.0):  # float32 logits near 100 round at 1e-5
        assert flip_loss(z, z.clone(), torch.tensor(s)).item() == pytest.approx(math.log(16), abs=2e-5)


def test_loss_is_stable_at_the_largest_scale():
    torch.manual_seed(0)
    zv = F.normalize(torch.randn(64, 8), dim=-1)
    loss = flip_loss(zv, zv.flip(0), torch.tensor(100.0))
    assert torch.isfinite(loss)  # exp(100) overflows float32; logsumexp does not


def test_logit_scale_starts_at_1_over_007_and_never_passes_100():
    method = build_method(from_dict(tiny_recipe()))
    assert method.logit_scale().item() == pytest.approx(14.2857, abs=1e-4)
    assert method.proj.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)
    with torch.no_grad():
        method.proj.logit_scale.fill_(7.0)  # theta beyond ln 100 (as an optimizer step could leave it)
    assert method.logit_scale().item() == pytest.approx(100.0, rel=1e-6)
    out = method({"video": torch.randn(4, 3, 8, 32, 32), "caption": ["a", "b", "c", "d"]})
    assert out["logit_scale"].item() == pytest.approx(100.0, rel=1e-6)
    out["loss"].backward()
    assert method.proj.logit_scale.grad.item() == 0.0  # clipped in the forward: no push further out


def test_fixed_logit_scale_is_not_a_parameter():
    """ViCLIP's fixed temperature 1/100: the scale is a buffer, saved with the weights, never trained."""
    method = build_method(from_dict(tiny_recipe(learn_logit_scale=False, logit_scale_init=100.0)))
    assert method.logit_scale().item() == pytest.approx(100.0)
    assert "proj.logit_scale" not in dict(method.named_parameters())
    assert "proj.logit_scale" in method.state_dict()
    with pytest.raises(ConfigError, match=r"method.logit_scale_init' in <dict> must be in \[1, 100\], got 1000"):
        build_method(from_dict(tiny_recipe(logit_scale_init=1000.0)))


def test_projections_have_no_bias_and_embeddings_are_unit_norm():
    method = build_method(from_dict(tiny_recipe())).eval()
    assert method.proj.vision.bias is None and method.proj.text.bias is None
    z = method.encode_video(torch.randn(3, 3, 8, 32, 32))
    t = method.encode_text(["a red disc moves left", "x", "a green square grows"])
    assert z.shape == (3, 16) and t.shape == (3, 16)
    assert torch.allclose(z.norm(dim=-1), torch.ones(3)) and torch.allclose(t.norm(dim=-1), torch.ones(3))


def test_masks_follow_the_sample_not_the_batch():
    """A sample's mask comes from its own seed: the same in any batch it is part of, so one process and
    W processes draw the same masks."""
    method = build_method(from_dict(tiny_recipe())).train()
    video = torch.randn(4, 3, 8, 32, 32)
    seeds = torch.tensor([11, 22, 33, 44])
    whole = method.train_mask(video, seeds)
    halves = torch.cat([method.train_mask(video[:2], seeds[:2]), method.train_mask(video[2:], seeds[2:])])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole[0], whole[1])


def test_no_weight_decay_on_positions_norms_biases_and_scale():
    from tubelet.engine.optim import build_optimizer

    method = build_method(from_dict(tiny_recipe()))
    opt = build_optimizer(method, from_dict(tiny_recipe()).optim, 1e-3)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in method.named_parameters() if id(p) in decay}
    assert "text.pos_embed" not in names and "proj.logit_scale" not in names
    assert not any(n.endswith(".bias") or "norm" in n for n in names)
    assert {"proj.vision.weight", "text.token_embed.weight", "text.blocks.0.attn.qkv.weight"} <= names


def test_recipe_errors_name_the_key():
    with pytest.raises(ConfigError, match="set data.captions: true"):
        build_method(from_dict({**tiny_recipe(), "data": {**tiny_recipe()["data"], "captions": False}}))
    with pytest.raises(ConfigError, match=r"method.mask_ratio' in <dict> must be in \[0, 1\)"):
        build_method(from_dict(tiny_recipe(mask_ratio=1.0)))
    method = build_method(from_dict(tiny_recipe()))
    with pytest.raises(ConfigError, match="FLIP pairs one clip with one caption"):
        method({"video": torch.randn(2, 2, 3, 8, 32, 32), "caption": ["a", "b"]})


def test_default_templates_are_flips_seven():
    assert len(FLIP_TEMPLATES) == 7 and all("{}" in t for t in FLIP_TEMPLATES)
    assert build_method(from_dict(tiny_recipe())).templates == list(FLIP_TEMPLATES)


_TWO = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    sys.path.insert(0, os.path.join(sys.argv[4], "tests"))
    from test_flip import tiny_recipe, one_step
    if rank >= 0:
        dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
    loss, grads = one_step(rank)
    if rank >= 0:
        for g in grads.values():  # DDP's gradient average
            dist.all_reduce(g)
            g /= 2
        dist.all_reduce(loss)
        loss /= 2
    torch.save({"loss": loss, "grads": grads}, out)
    print("OK", rank, flush=True)
    os._exit(0)  # torch 2.13 may abort in gloo teardown after an autograd all_gather (test_distributed)
""")


def one_step(rank: int) -> tuple[torch.Tensor, dict]:
    """One masked FLIP step on 8 pairs (rank -1), or on rank's half of them; loss and gradients."""
    torch.manual_seed(0)
    method = build_method(from_dict(tiny_recipe())).train()
    g = torch.Generator().manual_seed(1)
    video = torch.randn(8, 3, 8, 32, 32, generator=g)
    captions = [f"a clip number {i}" for i in range(8)]
    seeds = torch.arange(100, 108)
    part = slice(None) if rank < 0 else slice(4 * rank, 4 * rank + 4)
    out = method({"video": video[part], "caption": captions[part], "sample_seed": seeds[part]})
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    """gloo, 2 processes x 4 pairs with masking: the mean of the processes' losses is the one-process loss
    over the 8 pairs, and the averaged gradients are its gradients (negatives gathered with gradients)."""
    script = tmp_path / "two.py"
    script.write_text(_TWO)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "pg"), str(tmp_path / f"{r}.pt"),
                               str(REPO)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (-1, 0, 1)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "OK" in out, out[-3000:]
    one = torch.load(tmp_path / "-1.pt")
    two = torch.load(tmp_path / "0.pt")
    assert two["loss"].item() == pytest.approx(one["loss"].item(), rel=1e-5)
    assert one["grads"].keys() == two["grads"].keys()
    for name, g in one["grads"].items():
        assert torch.allclose(two["grads"][name], g, atol=1e-6, rtol=1e-4), name


# ------------------------------------------------------------------------------------------- data


def test_caption_manifests_csv_and_jsonl(tmp_path):
    from tubelet.data.datasets import read_manifest
    from tubelet.errors import DataError

    (tmp_path / "a.mp4").write_bytes(b"")
    csv = tmp_path / "pairs.csv"
    csv.write_text('path,caption\na.mp4,"a dog, running"\na.mp4,\n')
    with pytest.raises(DataError, match=r"pairs.csv:3: empty 'caption': with data.captions: true"):
        read_manifest(csv, captions=True)
    csv.write_text('path,caption\na.mp4,"a dog, running"\n')
    (sample,), _ = read_manifest(csv, captions=True)
    assert (sample.caption, sample.label) == ("a dog, running", -1)  # a pair needs no class
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"path": "a.mp4", "caption": "a cat", "label": 3}\n{"path": "a.mp4"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:2: missing 'caption'"):
        read_manifest(jsonl, captions=True)
    # without data.captions a manifest is what it was: a label per row, captions optional
    with pytest.raises(DataError, match=r"pairs.csv:2: missing 'label'"):
        read_manifest(csv)


def test_synthetic_pairs_carry_captions_mirrored_with_the_clip():
    """The synthetic set's captions name the main object's motion; a flipped clip (label left -> right)
    gets the mirrored caption too, or a caption would describe the opposite motion."""
    from tubelet.data.builder import build_dataset
    from tubelet.data.synthetic import mirror_caption

    assert mirror_caption("a red striped disc moves left next to a small blue square") == \
        "a red striped disc moves right next to a small blue square"
    assert mirror_caption("a red cross rotates counterclockwise") == "a red cross rotates clockwise"
    assert mirror_caption("a red cross rotates clockwise") == "a red cross rotates counterclockwise"
    assert mirror_caption("a red cross grows") == "a red cross grows"
    recipe = from_dict(tiny_recipe())
    train = build_dataset(recipe.data, "train")
    phrases = {0: "moves left", 1: "moves right", 2: "moves up", 3: "moves down", 4: "rotates clockwise",
               5: "rotates counterclockwise", 6: "grows", 7: "shrinks"}
    flipped = 0
    for i in range(24):
        s = train[i]
        assert phrases[int(s["label"])] in s["caption"], (s["label"], s["caption"])
        flipped += int(s["label"]) != i % 8
    assert flipped > 0  # some clips were mirrored, and their captions followed


# ------------------------------------------------------------------------------------------- eval


def test_retrieval_recall_on_a_hand_made_matrix():
    """4 videos x 5 captions (video 3 has two: captions 3 and 4). Ranks worked out by hand:
    text -> video: caption 0 finds video 0 1st, caption 1 video 1 2nd, caption 2 video 2 3rd, captions 3
    and 4 video 3 4th; video -> text: video 0 finds caption 0 1st, video 1 caption 1 3rd, video 2
    caption 2 3rd, video 3 its caption 4 2nd."""
    from tubelet.eval.retrieval import retrieval_recall

    sim = torch.tensor([
        # c0   c1   c2   c3   c4
        [0.9, 0.1, 0.2, 0.3, 0.8],   # v0
        [0.1, 0.5, 0.6, 0.2, 0.7],   # v1
        [0.3, 0.9, 0.4, 0.1, 0.6],   # v2
        [0.2, 0.2, 0.7, 0.0, 0.5],   # v3
    ])
    r = retrieval_recall(sim, torch.tensor([0, 1, 2, 3, 3]), ks=(1, 2, 3))
    assert r["t2v_r1"] == pytest.approx(1 / 5) and r["t2v_r2"] == pytest.approx(2 / 5)
    assert r["t2v_r3"] == pytest.approx(3 / 5)
    assert (r["v2t_r1"], r["v2t_r2"], r["v2t_r3"]) == pytest.approx((1 / 4, 2 / 4, 4 / 4))
    identity = retrieval_recall(torch.eye(12))
    assert identity["t2v_r1"] == identity["v2t_r1"] == 1.0
    assert retrieval_recall(-torch.eye(12))["t2v_r10"] == 0.0  # own video ranked last of 12


def test_zero_shot_prompts_and_classifier():
    from tubelet.eval.zero_shot import ZeroShotClassifier, class_prompts

    prompts = class_prompts(["move_left", "grow"], ["a {}.", "an object that {}"], {"grow": "grows"})
    assert prompts == [["a move left.", "an object that move left"], ["a grows.", "an object that grows"]]
    with pytest.raises(ConfigError, match="exactly one '{}'"):
        class_prompts(["a"], ["no slot"])
    with pytest.raises(ConfigError, match=r"class_texts names classes that are not in the label map: \['fly'\]"):
        class_prompts(["a"], ["{}"], {"fly": "flies"})
    method = build_method(from_dict(tiny_recipe())).eval()
    zs = ZeroShotClassifier(method, ["move_left", "move_right", "grow"])
    video = torch.randn(2, 3, 8, 32, 32)
    logits = zs.classify(video)
    # logits = s * v . mean-of-normalised-prompt-embeddings (renormalised), with the FLIP templates
    t = F.normalize(method.encode_text([tpl.format("move right") for tpl in FLIP_TEMPLATES]), dim=-1).mean(0)
    expect = method.logit_scale() * method.encode_video(video) @ F.normalize(t, dim=0)
    assert torch.allclose(logits[:, 1], expect, atol=1e-5)


def test_linear_probe_separates_separable_features():
    from tubelet.eval.linear_probe import linear_probe_accuracy

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 8, generator=g) * 0.3
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:], 3, steps=100) == 1.0
    shuffled = y[torch.randperm(300, generator=g)]
    assert linear_probe_accuracy(x[:200], shuffled[:200], x[200:], shuffled[200:], 3, steps=100) < 0.6


def test_cli_fit_then_test_reports_zero_shot_retrieval_and_probe(tmp_path, capsys):
    """`tubelet fit` on a FLIP recipe, then `tubelet test` on its method.safetensors: zero-shot top-1
    from class prompts, retrieval both ways and the linear probe, in the table and test_results.json."""
    import json

    import yaml

    from tubelet.cli.main import main

    cfg = tmp_path / "flip.yaml"
    recipe = tiny_recipe(tmp_path, probe_steps=20, templates=["a shape {}"])
    cfg.write_text(yaml.safe_dump(recipe))
    assert main(["fit", "--config", str(cfg)]) == 0
    run = tmp_path / "run"
    assert main(["test", str(cfg), "--checkpoint", str(run / "method.safetensors")]) == 0
    table = capsys.readouterr().out
    assert "zero-shot top-1 (%)" in table and "text->video R@1/5/10 (%)" in table and "linear probe top-1" in table
    res = json.loads((run / "report" / "test_results.json").read_text())
    assert res["num_videos"] == 8 and res["num_classes"] == 8 and 0 <= res["top1"] <= 1
    assert set(res["retrieval"]) == {f"{d}_r{k}" for d in ("t2v", "v2t") for k in (1, 5, 10)}
    assert res["retrieval"]["t2v_r10"] == 1.0  # 8 test clips: the own video is always in the top 10
    assert res["linear_probe_train_videos"] == 48
    # `tubelet zero-shot` on a real file, the recipe found beside the checkpoint
    video = REPO.parent / "shared" / "data" / "videos" / "video_0.mov"
    assert main(["zero-shot", str(video), "--checkpoint", str(run / "method.safetensors"), "--classes",
                 "moves left, grows ,shrinks", "--topk", "2", "--json"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    pred = json.loads(line)
    assert pred["path"] == str(video) and len(pred["topk"]) == 2
    assert {t["name"] for t in pred["topk"]} <= {"moves left", "grows", "shrinks"}
    assert sum(t["score"] for t in pred["topk"]) <= 1.0 + 1e-6
    assert main(["zero-shot", str(video), "--checkpoint", str(run / "method.safetensors"), "--classes", "dog"]) == 1
    assert "--classes needs at least two comma-separated names, got 'dog'" in capsys.readouterr().err
