import json
import re

import pytest

from tubelet.cli.main import main
from tubelet.config.loader import load_recipe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_recipes_differ_only_in_single_frame():
    video, still = load_recipe("demo"), load_recipe("demo_single_frame")
    assert not video.data.single_frame and still.data.single_frame
    still.data.single_frame = False
    assert video.model == still.model and video.data == still.data and video.optim == still.optim
    assert video.trainer == still.trainer
    assert video.model.num_classes == video.data.synthetic.num_classes


@pytest.mark.slow
def test_demo_quick_writes_table_and_report(tmp_path, capsys):
    # Smaller still than --quick so the test stays well under a minute on one thread.
    rc = main(["demo", "--quick", "--threads", "1", "--out", str(tmp_path),
               "--set", "trainer.max_steps=6", "--set", "data.synthetic.num_videos=96",
               "--set", "trainer.val_check_interval=3", "--set", "trainer.log_every_n_steps=1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert re.search(r"\| ViT, 8 frames \| [01]\.\d{3} \| [01]\.\d{3} \|", out)
    report = tmp_path / "report"
    rows = json.loads((report / "results.json").read_text())
    assert [r["model"] for r in rows] == ["ViT, 8 frames", "ViT, 1 frame repeated",
                                          "MAE-ST pre-training (no labels)", "ViT, 8 frames, MAE-ST pre-trained"]
    assert rows[2]["top1"] == "-"  # pre-training has no classifier to test
    rows = [rows[i] for i in (0, 1, 3)]
    for r in rows:
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
        assert r["test_clips"] == 12 and float(r["train_s"]) > 0
    page = (report / "index.html").read_text()
    for name in ("loss.png", "accuracy.png", "samples_vit__8_frames.png", "confusion_vit__8_frames.png",
                 "samples_vit__1_frame_repeated.png", "confusion_vit__1_frame_repeated.png"):
        assert (report / name).read_bytes()[:8] == PNG_MAGIC, name
        assert name in page
    assert (tmp_path / "mae_pretrain" / "report" / "reconstructions.png").read_bytes()[:8] == PNG_MAGIC
    assert "mae_pretrain/report/reconstructions.png" in page
    for stage in ("video", "single_frame", "mae_pretrain", "mae_finetune"):
        run = tmp_path / stage
        assert (run / "backbone.safetensors").is_file() and (run / "config.yaml").is_file()
        assert (run / "logs" / "csv" / "metrics.csv").is_file()
    assert load_recipe(str(tmp_path / "single_frame" / "config.yaml")).data.single_frame


def test_demo_twice_into_the_same_folder_replaces_its_runs(tmp_path, monkeypatch, capsys):
    """`make demo` twice: the demo owns its stage folders, so the second run replaces the first instead of
    being refused as a fresh run into a folder with another run's checkpoints."""
    import torch

    from tubelet.cli import demo

    monkeypatch.setattr(demo, "STAGES", [demo.Stage("video", "ViT, 8 frames", "demo")])
    args = ["demo", "--quick", "--threads", "1", "--out", str(tmp_path), "--set", "trainer.max_steps=2",
            "--set", "trainer.checkpoint_every_n_steps=1", "--set", "data.synthetic.num_videos=32",
            "--set", "trainer.val_check_interval=2"]
    assert main(args) == 0
    assert main(args + ["--set", "seed=1"]) == 0
    run = tmp_path / "video"
    assert load_recipe(str(run / "config.yaml")).seed == 1
    for ckpt in sorted((run / "checkpoints").glob("*.ckpt")):
        assert torch.load(ckpt, weights_only=True)["tubelet_run"]["recipe"]["seed"] == 1  # none of the first run's


@pytest.mark.parametrize("name, recipe", [("slowfast_r50_4x16", "slowfast_synthetic"), ("x3d_xs", "x3d_synthetic"),
                                          ("mvitv1_b_16x4", "mvitv2_synthetic")])
def test_demo_model_trains_that_zoo_model(tmp_path, capsys, name, recipe):
    """`tubelet demo --model NAME`: one stage, NAME itself (not the recipe's own model) on the synthetic set."""
    rc = main(["demo", "--model", name, "--quick", "--threads", "1", "--out", str(tmp_path),
               "--set", "trainer.max_steps=2", "--set", "data.synthetic.num_videos=48",
               "--set", "trainer.val_check_interval=2", "--set", "trainer.log_every_n_steps=1"])
    assert rc == 0
    assert f"| {name} (reduced, {recipe}) |" in capsys.readouterr().out
    rows = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [r["model"] for r in rows] == [f"{name} (reduced, {recipe})"]
    run = load_recipe(str(tmp_path / name / "config.yaml"))
    assert run.model.name == name and (tmp_path / name / "backbone.safetensors").is_file()


def test_demo_model_outside_the_zoo_is_one_line_error(tmp_path, capsys):
    assert main(["demo", "--model", "vit_base", "--out", str(tmp_path)]) == 1
    assert "'vit_base' has no synthetic recipe" in capsys.readouterr().err
    assert main(["demo", "--model", "no_such_model", "--out", str(tmp_path)]) == 1
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any run folder
