"""The training engine end to end on tiny toys: run folder, logs, exact resume, non-finite losses, CLI."""

import csv
import json
import shutil
from dataclasses import dataclass

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from toys import ToyBackbone, ToyMethod, ToyVideos, toy_recipe

from tubelet.config.loader import load_recipe
from tubelet.engine import FitResult, fit
from tubelet.core.ckpt_format import find_latest_checkpoint, load_checkpoint
from tubelet.engine.datamodule import ResumableSampler
from tubelet.engine.module import count_clips
from tubelet.eval.multiview import topk_correct
from tubelet.errors import TubeletError
from tubelet.models.registry import create_model, list_models, register_model
from tubelet.models.weights import read_state_dict


@dataclass
class _ToyCfg:
    num_classes: int = 4


@pytest.fixture
def toy_model_name():
    """A registered toy backbone, removed again so that other tests see the real registry only."""
    from tubelet.models import registry

    name = "engine_test_toy"
    if name not in list_models():
        register_model(name, _ToyCfg())(lambda cfg: ToyBackbone(cfg.num_classes))
    yield name
    registry._REGISTRY.pop(name, None)


def _data(n_train=12, repeat=1):
    return {"train": ToyVideos(n_train, repeat=repeat), "val": ToyVideos(8)}


class Crash(Callback):
    """Raise at the start of the batch after ``at`` optimizer steps (after that step's checkpoint)."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


class Record(Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch["index"].tolist())


def test_quick_fit_writes_run_folder(tmp_path, toy_model_name):
    torch.manual_seed(0)
    recipe = toy_recipe(tmp_path / "run", max_steps=6, val_check_interval=3)
    result = fit(recipe, method=ToyMethod(), datasets=_data())
    run = tmp_path / "run"
    assert isinstance(result, FitResult) and result.run_dir == run
    # effective config round-trips
    assert load_recipe(run / "config.yaml") == recipe
    # CSV log: one row per step with loss, lr, clips/s and the method's own scalar; validation top-1/top-5
    rows = list(csv.DictReader(open(run / "logs" / "csv" / "metrics.csv")))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps == list(range(6))
    header = rows[0].keys()
    for key in ("train/loss", "train/acc", "lr", "clips_per_s", "val/top1", "val/top5"):
        assert key in header, key
    lrs = [float(r["lr"]) for r in rows if r.get("lr")]
    assert lrs[0] == pytest.approx(0.0) and max(lrs) == pytest.approx(0.05)  # warmup from 0 to optim.lr
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    # checkpoints and exported weights
    assert [p.name for p in result.checkpoints] == ["step=000004.ckpt", "step=000006.ckpt"]
    method_sd = read_state_dict(run / "method.safetensors")
    assert method_sd.keys() == result_method_keys()
    backbone = create_model(toy_model_name, checkpoint=str(run / "backbone.safetensors"))
    assert torch.equal(backbone.head.weight, method_sd["backbone.head.weight"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and "val/top1" in metrics and metrics["peak_lr"] == 0.05
    assert metrics == result.metrics


def result_method_keys():
    return set(ToyMethod().state_dict())


def test_lr_rule_scales_with_videos_per_step(tmp_path):
    recipe = toy_recipe(tmp_path / "run", max_steps=2, accumulate_grad_batches=2)
    recipe.optim.lr = None
    recipe.optim.base_lr = 0.64
    result = fit(recipe, method=ToyMethod(), datasets=_data(16, repeat=2))
    # 4 videos per batch x 2 accumulated x 1 process = 8 videos (16 clips with r=2): 0.64 * 8 / 256
    assert result.metrics["peak_lr"] == pytest.approx(0.02)


def _fit_pair(tmp_path, n_train, crash, ema=None, workers=0, **trainer):
    """(straight run to 2*crash steps, run crashed after `crash` steps then resumed with resume='auto')."""
    kw = dict(checkpoint_every_n_steps=crash, keep_last_k=3, val_check_interval=3, max_steps=2 * crash, **trainer)

    def recipe(name):
        r = toy_recipe(tmp_path / name, **kw)
        r.optim.ema_decay = ema
        r.data.num_workers = workers
        return r

    rec_a, rec_b = Record(), Record()
    torch.manual_seed(0)
    straight = ToyMethod()
    fit(recipe("a"), method=straight, datasets=_data(n_train), callbacks=[rec_a])
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(recipe("b"), method=ToyMethod(), datasets=_data(n_train), callbacks=[Crash(crash), rec_b])
    assert find_latest_checkpoint(tmp_path / "b" / "checkpoints").name == f"step={crash:06d}.ckpt"
    torch.manual_seed(123)  # a different init and RNG: everything must come from the checkpoint
    resumed = ToyMethod()
    result = fit(recipe("b"), method=resumed, datasets=_data(n_train), resume="auto", callbacks=[rec_b])
    assert result.metrics["global_step"] == 2 * crash
    return straight, resumed, rec_a.batches, rec_b.batches


@pytest.mark.parametrize(
    "n_train,crash,extra",
    [(12, 4, {}), (10, 4, {}), (12, 3, {"ema": 0.9}), (12, 4, {"accumulate_grad_batches": 2}),
     (12, 4, {"workers": 1})],
    ids=["mid-epoch", "epoch-boundary", "ema", "accumulation", "worker-process"],
)
def test_resume_is_bitwise_exact(tmp_path, n_train, crash, extra):
    # 12 samples / batch 4 = 3 batches per epoch: a crash after step 4 is mid-epoch; with 10 samples
    # (2 batches) it falls on an epoch boundary. EMA: the averaged weights and callback state are
    # restored too. A worker process: per-sample seeding makes its augmentations repeat.
    straight, resumed, seen_a, seen_b = _fit_pair(tmp_path, n_train, crash, **extra)
    assert seen_a == seen_b  # same data order, no batch repeated or skipped
    # the CSV log of the resumed run holds every step once, the earlier ones included
    rows = list(csv.DictReader(open(tmp_path / "b" / "logs" / "csv" / "metrics.csv")))
    assert sorted(int(r["step"]) for r in rows if r.get("train/loss")) == list(range(2 * crash))
    sa, sb = straight.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / f"step={2 * crash:06d}.ckpt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / f"step={2 * crash:06d}.ckpt")
    for sa_opt, sb_opt in zip(a["optimizer_states"], b["optimizer_states"]):
        for i, st in sa_opt["state"].items():
            for name, t in st.items():
                assert torch.equal(t, sb_opt["state"][i][name]), (i, name)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"] == 2 * crash
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_resume_explicit_path_and_missing(tmp_path):
    torch.manual_seed(0)
    recipe = toy_recipe(tmp_path / "run", max_steps=4)
    fit(recipe, method=ToyMethod(), datasets=_data())
    ckpt = tmp_path / "run" / "checkpoints" / "step=000002.ckpt"
    result = fit(recipe, method=ToyMethod(), datasets=_data(), resume=ckpt)  # the same run, from step 2
    assert result.metrics["global_step"] == 4
    with pytest.raises(TubeletError, match="not found"):
        fit(recipe, method=ToyMethod(), datasets=_data(), resume=tmp_path / "nope.ckpt")
    # resume="auto" without any checkpoint starts fresh
    fresh = fit(toy_recipe(tmp_path / "other", max_steps=2), method=ToyMethod(), datasets=_data(), resume="auto")
    assert fresh.metrics["global_step"] == 2


def test_nonfinite_loss_stops_naming_step_and_checkpoint(tmp_path):
    method = ToyMethod()
    method.poison_at = 6  # the 6th batch: after the checkpoints of steps 2 and 4
    with pytest.raises(TubeletError) as err:
        fit(toy_recipe(tmp_path / "run", max_steps=8), method=method, datasets=_data())
    msg = str(err.value)
    assert "non-finite loss" in msg and "at step 5" in msg
    assert str(tmp_path / "run" / "checkpoints" / "step=000004.ckpt") in msg


def test_nonfinite_loss_skip_then_budget(tmp_path):
    method = ToyMethod()
    method.poison_at = 3
    result = fit(toy_recipe(tmp_path / "a", max_steps=6, nonfinite="skip", max_skipped_steps=1),
                 method=method, datasets=_data())
    assert result.metrics["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in method.parameters())

    class TwoNaNs(ToyMethod):
        def forward(self, batch):
            out = super().forward(batch)
            if self.calls in (2, 4):
                out["loss"] = out["loss"] * float("nan")
            return out

    with pytest.raises(TubeletError, match="after skipping 1 steps"):
        fit(toy_recipe(tmp_path / "b", max_steps=6, nonfinite="skip", max_skipped_steps=1),
            method=TwoNaNs(), datasets=_data())


def test_bf16_mixed_on_cpu_runs(tmp_path):
    torch.manual_seed(0)
    result = fit(toy_recipe(tmp_path / "run", max_steps=2, precision="bf16-mixed"), method=ToyMethod(),
                 datasets=_data())
    assert result.metrics["global_step"] == 2 and torch.isfinite(torch.tensor(result.metrics["train/loss"]))


def test_bf16_mixed_with_gradient_clipping_trains(tmp_path):
    """Lightning's mixed-precision plugin refuses to clip a fused optimizer's gradients: with
    optim.clip_grad set the module builds the unfused AdamW there, and fp32 keeps the fused one."""
    from tubelet.config.schema import OptimConfig
    from tubelet.engine.optim import fused_allowed

    torch.manual_seed(0)
    recipe = toy_recipe(tmp_path / "run", max_steps=2, precision="bf16-mixed")
    recipe.optim.clip_grad = 0.5
    result = fit(recipe, method=ToyMethod(), datasets=_data())
    assert result.metrics["global_step"] == 2 and torch.isfinite(torch.tensor(result.metrics["train/loss"]))
    assert not fused_allowed(OptimConfig(clip_grad=0.5), "bf16-mixed")
    assert fused_allowed(OptimConfig(clip_grad=0.5), "32-true") and fused_allowed(OptimConfig(), "bf16-mixed")


def test_sampler_shards_resumes_and_counts():
    full = []
    for rank in range(3):
        s = ResumableSampler(10, seed=5, num_replicas=3, rank=rank)
        s.set_epoch(2)
        full.append([i for i, _, _ in s])
        assert len(full[-1]) == len(s) == 4
    assert set(sum(full, [])) == set(range(10))  # every index; two repeated to pad 10 to 12
    s = ResumableSampler(10, seed=5, num_replicas=3, rank=1)
    s.set_epoch(2)
    s.consumed = 2
    state = s.state_dict()
    t = ResumableSampler(10, seed=5, num_replicas=3, rank=1)
    t.load_state_dict(state)
    t.set_epoch(2)
    assert [i for i, _, _ in t] == full[1][2:]
    assert [i for i, _, _ in t] == full[1]  # the skip applies once
    t.set_epoch(3)
    assert [i for i, _, _ in t] != full[1]  # another epoch, another order
    assert count_clips(torch.zeros(4, 3, 2, 4, 4)) == 4 and count_clips(torch.zeros(4, 2, 3, 2, 4, 4)) == 8
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    top1, top5 = topk_correct(logits, torch.tensor([0, 0]))
    assert int(top1) == 1 and int(top5) == 2


def test_cli_fit_and_misspelt_key(tmp_path, capsys):
    from tubelet.cli.main import main

    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"max_stpes": 3}}))
    assert main(["fit", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'trainer.max_stpes'" in err and str(cfg) in err and "'trainer.max_steps'" in err
    assert "Traceback" not in err
    cfg.write_text(yaml.safe_dump({"trainer": {"max_steps": 3}}))
    assert main(["fit", "--config", str(cfg), "optim.lrr=0.1"]) == 1
    err = capsys.readouterr().err
    assert "unknown key 'optim.lrr' in command line" in err and "did you mean 'optim.lr'" in err
    assert main(["fit", "--config", str(cfg), "--resume", str(tmp_path / "missing.ckpt")]) == 1
    assert "missing.ckpt: checkpoint to resume from not found" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


TINY_RECIPE = {
    "model": {"name": "vit_tiny", "num_frames": 4, "img_size": 16, "num_classes": 4,
              "overrides": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}},
    "data": {"kind": "synthetic", "num_frames": 4, "crop_size": 16, "batch_size": 4, "test_clips": 2,
             "test_crops": 3, "synthetic": {"num_videos": 48, "num_classes": 4, "size": 16, "frames": 8}},
    "method": {"name": "supervised"},
    "optim": {"lr": 1.0e-3, "warmup_steps": 2, "layer_decay": 0.75},
    "trainer": {"max_steps": 4, "checkpoint_every_n_steps": 2, "keep_last_k": 2, "num_threads": 1,
                "enable_progress_bar": False, "log_every_n_steps": 1, "val_check_interval": 4},
}


def test_recipe_path_end_to_end(tmp_path, capsys):
    """The real recipe path: synthetic data + supervised method + space-time ViT, through the CLI."""
    from tubelet.cli.main import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_RECIPE, "run_dir": str(tmp_path / "run")}))
    assert main(["fit", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "val/top1" in out and f"run folder: {run}" in out
    page = (run / "report" / "index.html").read_text()  # fit writes the run report
    assert "loss.png" in page and (run / "report" / "loss.png").is_file()
    assert "Effective config (config.yaml)" in page and "vit_tiny" in page and "stage" in page
    for name in ("config.yaml", "method.safetensors", "backbone.safetensors", "metrics.json",
                 "checkpoints/step=000004.ckpt", "logs/csv/metrics.csv"):
        assert (run / name).is_file(), name
    backbone = create_model("vit_tiny", checkpoint=str(run / "backbone.safetensors"), num_frames=4, img_size=16,
                            num_classes=4, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    method_sd = read_state_dict(run / "method.safetensors")
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, method_sd[f"backbone.{k}"]), k
    # resume=auto from the final checkpoint: nothing left to train, and metrics.json still says all it said
    final = json.loads((run / "metrics.json").read_text())
    assert main(["fit", "--config", str(cfg), "--resume", "auto"]) == 0
    assert json.loads((run / "metrics.json").read_text()) == final and final["global_step"] == 4
    capsys.readouterr()
    assert main(["test", "--config", str(cfg), "--checkpoint", str(run / "checkpoints" / "step=000004.ckpt")]) == 0
    table = capsys.readouterr().out
    rows = {line[:22].strip(): line[22:].strip() for line in table.splitlines() if not line.startswith("-")}
    assert rows["views per video"] == "6" and "top-1 (%)" in rows and rows["top-5 (%)"] == "100.00"
    assert rows["skipped (unreadable)"] == "0"
    page = (run / "report" / "index.html").read_text()  # and test adds its results and figure to it
    assert "<td>test</td>" in page and "confusion.png" in page
    assert (run / "report" / "confusion.png").is_file()


def test_trainer_settings_come_from_the_recipe(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.callbacks.weight_averaging import EMAWeightAveraging

    from tubelet.engine.checkpoint import SafeCheckpointIO
    from tubelet.engine.trainer import build_trainer

    recipe = toy_recipe(tmp_path / "run", accumulate_grad_batches=3, checkpoint_every_n_steps=7, keep_last_k=4)
    recipe.optim.clip_grad = 0.5
    recipe.optim.ema_decay = 0.99
    deterministic = torch.are_deterministic_algorithms_enabled()
    trainer = build_trainer(recipe)
    torch.use_deterministic_algorithms(deterministic)  # the Trainer set it process-wide
    assert trainer.gradient_clip_val == 0.5 and trainer.accumulate_grad_batches == 3
    ckpt = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(ckpt) == 1 and ckpt[0]._every_n_train_steps == 7
    assert any(isinstance(c, EMAWeightAveraging) for c in trainer.callbacks)
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    assert trainer.strategy.checkpoint_io.keep_last_k == 4  # the plugin keeps keep_last_k, across resumes too
    assert {lg.log_dir for lg in trainer.loggers} == {str(tmp_path / "run" / "logs" / "csv"),
                                                    str(tmp_path / "run" / "logs" / "tensorboard")}


def test_cli_accepts_positional_recipe(tmp_path, capsys):
    from tubelet.cli.main import main

    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"max_steps": 3}}))
    assert main(["test", str(cfg), "--checkpoint", str(tmp_path / "none.ckpt")]) == 1
    assert "none.ckpt: checkpoint not found" in capsys.readouterr().err
    assert main(["fit"]) == 1
    assert "no recipe given" in capsys.readouterr().err


def test_mixup_from_recipe_reaches_the_batches(tmp_path):
    class Labels(Callback):
        def __init__(self):
            self.labels = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.labels.append(batch["label"])

    recipe = toy_recipe(tmp_path / "run", max_steps=2)
    recipe.data.augment.mixup_alpha = 0.8
    recipe.model.num_classes = 4
    rec = Labels()
    fit(recipe, method=ToyMethod(), datasets=_data(), callbacks=[rec])
    assert all(lab.shape == (4, 4) and lab.dtype == torch.float32 for lab in rec.labels)
    assert torch.allclose(rec.labels[0].sum(1), torch.ones(4))
    soft = torch.cat(rec.labels)
    assert ((soft > 0.01) & (soft < 0.99)).any()  # mixed, not one-hot


def test_fit_restores_global_determinism_setting(tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    fit(toy_recipe(tmp_path / "run", max_steps=1), method=ToyMethod(), datasets=_data())
    assert not torch.are_deterministic_algorithms_enabled()


def test_epoch_based_training_and_unbounded_schedule(tmp_path):
    # 12 samples / batch 4 = 3 steps per epoch; the LR schedule ends with the last epoch
    result = fit(toy_recipe(tmp_path / "a", max_steps=-1, max_epochs=2), method=ToyMethod(), datasets=_data())
    assert result.metrics["global_step"] == 6
    with pytest.raises(TubeletError, match="max_steps"):
        fit(toy_recipe(tmp_path / "b", max_steps=-1), method=ToyMethod(), datasets=_data())


class U8Videos(ToyVideos):
    """The toy clips as uint8, as a loader with data.device_transforms hands them over."""

    def __getitem__(self, index):
        s = super().__getitem__(index)
        s["video"] = (s["video"].clamp(0, 1) * 255).round().to(torch.uint8)
        return s


def test_device_transforms_run_on_the_training_batches(tmp_path):
    """With data.device_transforms the loader's uint8 clips reach the method normalised."""

    class Seen(Callback):
        def __init__(self):
            self.videos = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.videos.append(batch["video"])

    recipe = toy_recipe(tmp_path / "run", max_steps=2)
    recipe.data.device_transforms = True
    recipe.data.mean, recipe.data.std = [0.5] * 3, [0.25] * 3
    seen = Seen()
    fit(recipe, method=ToyMethod(), datasets={"train": U8Videos(8), "val": ToyVideos(4)}, callbacks=[seen])
    got = torch.cat(seen.videos)
    assert got.dtype == torch.float32 and got.shape == (8, 3, 2, 4, 4)
    # normalised exactly once from uint8: (x * std + mean) * 255 is a whole grey level in [0, 255]
    levels = (got * 0.25 + 0.5) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.min() > -0.01 and levels.max() < 255.01
    assert levels.std() > 10  # and not all one value


def test_device_transforms_mix_on_the_device(tmp_path):
    """Mixup moves to the device with the clip transforms: soft labels reach the method."""

    class Seen(Callback):
        def __init__(self):
            self.batches = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.batches.append((batch["video"], batch["label"], batch.get("mix_lambda")))

    recipe = toy_recipe(tmp_path / "run", max_steps=2)
    recipe.data.device_transforms = True
    recipe.data.augment.randaugment = "rand-m9-n2-mstd0.5-inc1"
    recipe.data.augment.mixup_alpha, recipe.model.num_classes = 0.8, 4
    seen = Seen()
    fit(recipe, method=ToyMethod(), datasets={"train": U8Videos(8), "val": ToyVideos(4)}, callbacks=[seen])
    for video, label, lam in seen.batches:
        assert video.dtype == torch.float32 and label.shape == (4, 4) and lam is not None
        assert torch.allclose(label.sum(1), torch.ones(4))


class _CountingOpener:
    """Opens videos with PyAV and appends each opened path to a log file (works across worker processes)."""

    def __init__(self, log) -> None:
        self.log = str(log)

    def __call__(self, path):
        from tubelet.data.decoding import open_video

        with open(self.log, "a") as f:
            f.write(f"{path}\n")
        return open_video(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_count_once_and_are_not_decoded_again(tmp_path, videos_dir, caplog, recwarn, workers):
    """2 of 12 files corrupt over 4 epochs: the budget counts 2 files (it used to count every read, "7 of
    12 samples failed" by epoch 3), each bad file is opened once, reported once and listed once."""
    from tubelet.config import from_dict
    from tubelet.data.builder import build_dataset
    from tubelet.engine import fit

    good = ["v_SoccerJuggling_g23_c01.avi", "WUzgd7C1pWA.mp4", "bbb_480p_vp9_opus_1second.webm", "unordered.mov",
            "RATRACE_wave_f_nm_np1_fr_goo_37.avi"]
    rows = [good[i % 5] for i in range(10)] + ["corrupt_truncated.mp4", "corrupted.mp4"]
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{i % 4}\n" for i, p in enumerate(rows)))
    recipe = from_dict({
        **TINY_RECIPE, "run_dir": str(tmp_path / "run"),
        "data": {"kind": "manifest", "train": str(manifest), "root": str(videos_dir), "num_frames": 4,
                 "crop_size": 16, "batch_size": 4, "num_workers": workers, "max_failure_fraction": 0.2,
                 "augment": {"short_side": [16, 20]}},
        "trainer": {**TINY_RECIPE["trainer"], "max_steps": 12, "val_check_interval": None},
    })
    ds = build_dataset(recipe.data, "train", seed=recipe.seed)
    log = tmp_path / "opened.txt"
    ds.opener = _CountingOpener(log)
    fit(recipe, datasets={"train": ds})  # 3 steps an epoch: 4 epochs, every file read 4 times
    opened = log.read_text().splitlines()
    bad = [str(videos_dir / "corrupt_truncated.mp4"), str(videos_dir / "corrupted.mp4")]
    assert [opened.count(p) for p in bad] == [1, 1]
    assert opened.count(str(videos_dir / good[0])) == 4 * 2  # good files are read every epoch
    listed = (tmp_path / "run" / "bad_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == bad
    console = caplog.text  # Lightning's rank-zero logger, which prints to the console
    for p in bad:
        assert console.count(f"skipping unreadable file {p}") == 1
    # the console without noise: no tips, no hardware banners, no warnings about what tubelet does on purpose
    assert "Tip" not in console and "GPU available" not in console
    assert not [w for w in recwarn if "LeafSpec" in str(w.message) or "logging interval" in str(w.message)]
    if workers == 0:  # `tubelet test` says how many videos it skipped, and which
        import contextlib
        import io

        from tubelet.cli.main import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(["test", "--config", str(tmp_path / "run" / "config.yaml"), f"data.val={manifest}",
                       "data.num_workers=0", "--checkpoint", str(tmp_path / "run" / "method.safetensors")])
        table = out.getvalue()
        # corrupted.mp4 breaks after frame 28: the test's centre window decodes, the truncated file does not
        rows = {line[:22].strip(): line[22:].strip() for line in table.splitlines() if not line.startswith("-")}
        assert rc == 0 and rows["videos"] == "11" and rows["skipped (unreadable)"] == "1"
        assert f"skipped {bad[0]}: cannot open" in table and bad[1] not in table


def test_progress_bar_shows_no_logger_version(tmp_path):
    """Lightning's bar showed ``v_num=oard``: the TensorBoard logger's version "tensorboard", cut to 4 chars."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from tubelet.config import from_dict
    from tubelet.engine.console import ProgressBar
    from tubelet.engine.trainer import build_trainer

    trainer = build_trainer(from_dict({**TINY_RECIPE, "run_dir": str(tmp_path / "run"),
                                       "trainer": {**TINY_RECIPE["trainer"], "enable_progress_bar": True}}))
    bar = next(c for c in trainer.callbacks if isinstance(c, TQDMProgressBar))
    assert isinstance(bar, ProgressBar)
    assert TQDMProgressBar.get_metrics(bar, trainer, None) == {"v_num": "oard"}  # what Lightning's bar shows
    assert "v_num" not in bar.get_metrics(trainer, None)
