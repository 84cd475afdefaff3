"""``tubelet predict``: top-k classes per video file through the test pipeline, from a run folder alone."""

from __future__ import annotations

import json

import pytest

from conftest import error_lines

from tubelet.errors import ConfigError

NAMES = ["move_left", "move_right", "move_up", "move_down"]  # the synthetic set's first four motions
UNREADABLE = {"corrupt_truncated.mp4", "corrupted.mp4"}  # SOURCES.md: cannot be opened / decode error


@pytest.fixture
def run(tiny_run):
    return tiny_run  # conftest.tiny_run: a 4-step supervised run trained through the CLI


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_run_folder_saves_the_class_names(run):
    assert (run / "labels.txt").read_text(encoding="utf-8").splitlines() == NAMES


def test_predict_every_clip_matches_the_test_pipeline(run, videos_dir, tmp_path, capsys):
    from tubelet.cli.main import main
    from tubelet.config import load_recipe
    from tubelet.engine import evaluate

    files = sorted(str(p) for p in videos_dir.iterdir() if p.is_file())
    capsys.readouterr()
    rc = main(["predict", *files, "--run", str(run), "--json"])
    out, err = capsys.readouterr()
    assert rc == 1  # some files are unreadable
    records = [json.loads(line) for line in _lines(out)]
    assert [r["path"] for r in records] == files  # one object per file, in order
    failed = {r["path"].rsplit("/", 1)[-1] for r in records if "error" in r}
    assert failed == UNREADABLE
    errors = _lines(err)
    assert len(errors) == len(UNREADABLE)
    for r in records:
        if "error" in r:
            assert r["topk"] == [] and f"tubelet predict: error: {r['path']}: {r['error']}" in errors
            continue
        scores = [t["score"] for t in r["topk"]]
        assert len(scores) == 4 and r["num_views"] == 2 * 3  # --topk 5 capped at 4 classes; 2 clips x 3 crops
        assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6 and min(scores) > 0
        assert [t["name"] for t in r["topk"]] == [NAMES[t["label"]] for t in r["topk"]]
        assert sorted(t["label"] for t in r["topk"]) == [0, 1, 2, 3]

    # independently: `tubelet test`'s pipeline (evaluate) over a manifest of the readable files
    good = [r for r in records if "error" not in r]
    manifest = tmp_path / "files.csv"
    manifest.write_text("path,label\n" + "".join(f"{r['path']},0\n" for r in good), encoding="utf-8")
    recipe = load_recipe(run / "config.yaml", ["data.kind=manifest", f"data.val={manifest}"])
    results = evaluate(recipe, run / "method.safetensors", report_dir=tmp_path / "report")
    assert results["num_views"] == 6 and len(results["predictions"]) == len(good)
    for r, p in zip(good, sorted(results["predictions"], key=lambda p: p["index"])):
        assert r["topk"][0]["label"] == p["pred"], r["path"]
        assert abs(r["topk"][0]["score"] - p["score"]) < 1e-6, r["path"]


def test_predict_table_topk_and_python_api(run, videos_dir, capsys):
    from tubelet.cli.main import main
    from tubelet.engine import predict

    path = str(videos_dir / "video_0.mov")
    [pred] = predict([path], run_dir=run, topk=2)
    assert pred.ok and pred.num_views == 6 and len(pred.topk) == 2
    capsys.readouterr()
    assert main(["predict", path, "--run", str(run), "--topk", "2"]) == 0
    out, err = capsys.readouterr()
    lines = _lines(out)
    assert err == "" and lines[0] == f"{path}  (6 views)" and len(lines) == 3
    for rank, (line, (i, name, score)) in enumerate(zip(lines[1:], pred.topk), 1):
        assert line.split() == [str(rank), str(i), name, f"{score:.4f}"]
    with pytest.raises(ConfigError, match="--topk must be at least 1"):
        predict([path], run_dir=run, topk=0)


def test_predict_without_class_names_prints_indices_once(run, videos_dir, tmp_path, capsys):
    import shutil

    from tubelet.cli.main import main

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.yaml", "method.safetensors"):
        shutil.copy(run / name, bare / name)
    paths = [str(videos_dir / "video_0.mov"), str(videos_dir / "unordered.mov")]
    capsys.readouterr()
    assert main(["predict", *paths, "--run", str(bare), "--json"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in _lines(out)]
    assert len(records) == 2 and all(t["name"] is None for r in records for t in r["topk"])
    assert len(_lines(err)) == 1 and "no class names" in err and "indices" in err


def test_predict_from_checkpoint_and_recipe(run, videos_dir, capsys):
    from tubelet.cli.main import main
    from tubelet.engine import predict

    path = str(videos_dir / "video_90.mov")
    [want] = predict([path], run_dir=run)
    capsys.readouterr()
    assert main(["predict", path, "--checkpoint", str(run / "method.safetensors"), "--config",
                 str(run / "config.yaml"), "--json"]) == 0
    [got] = [json.loads(line) for line in _lines(capsys.readouterr().out)]
    assert [(t["label"], t["name"]) for t in got["topk"]] == [(i, n) for i, n, _ in want.topk]  # synthetic names
    assert [t["score"] for t in got["topk"]] == pytest.approx([s for _, _, s in want.topk], abs=1e-6)


def test_predict_argument_errors_are_one_line(run, videos_dir, tmp_path, capsys):
    from tubelet.cli.main import main

    path = str(videos_dir / "video_0.mov")
    for argv, expected in (
        (["--checkpoint", str(run / "method.safetensors")], "give --run RUN_DIR, or --checkpoint FILE with --config"),
        (["--run", str(tmp_path)], f"{tmp_path}: not a run folder (no config.yaml)"),
    ):
        capsys.readouterr()
        assert main(["predict", path, *argv]) == 1
        err = capsys.readouterr().err
        assert len(error_lines(err)) == 1 and expected in err, err


def test_fit_writes_the_train_sets_names_and_never_keeps_stale_ones(tmp_path):
    from toys import ToyMethod, ToyVideos, toy_recipe

    from tubelet.engine import fit

    class Named(ToyVideos):
        class_names = ["a", "b", "c", "d"]

    import dataclasses

    run = tmp_path / "run"
    recipe = toy_recipe(run, max_steps=2)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, num_classes=4))  # the 4 names
    result = fit(recipe, method=ToyMethod(), datasets={"train": Named(8), "val": None})
    assert (run / "labels.txt").read_text(encoding="utf-8") == "a\nb\nc\nd\n"
    assert result.paths["labels"] == run / "labels.txt"
    # the same folder reused by a run whose training set has no class names: no labels.txt is left behind
    result = fit(recipe, method=ToyMethod(), datasets={"train": ToyVideos(8), "val": None}, overwrite=True)
    assert not (run / "labels.txt").exists() and "labels" not in result.paths


def test_predict_takes_test_pipeline_overrides_among_the_files(run, videos_dir, capsys):
    from tubelet.cli.main import main

    path = str(videos_dir / "video_0.mov")
    capsys.readouterr()
    # the run's recipe tests 2 clips x 3 crops; the overrides, before and after the options, change that
    assert main(["predict", path, "data.test_clips=1", "--run", str(run), "--json", "data.test_crops=1"]) == 0
    [got] = [json.loads(line) for line in _lines(capsys.readouterr().out)]
    assert got["path"] == path and got["num_views"] == 1
    capsys.readouterr()
    assert main(["predict", path, "model.num_classes=7", "--run", str(run)]) == 1
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "data.* and trainer.* overrides only" in err, err
