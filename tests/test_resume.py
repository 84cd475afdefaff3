"""A run folder holds one run: checkpoints record their run's recipe, a resume continues it (another run's
checkpoint is refused or passed over, naming the keys), keep_last_k holds across resumes, killed writes
leave nothing behind, and metrics.json and bad_files.txt say what the run did however it stopped."""

import csv
import json
import logging
import shutil

import pytest
import torch
import yaml
from test_engine import TINY_RECIPE, Crash
from toys import ToyMethod, ToyVideos, toy_recipe

from tubelet.config.loader import load_recipe
from tubelet.core.ckpt_format import is_complete, load_checkpoint
from tubelet.engine import fit
from tubelet.errors import CheckpointError, ConfigError, DataError


@pytest.fixture
def console(caplog):
    """Lightning's rank-zero logger, which tubelet's console lines go through."""
    caplog.set_level(logging.INFO)
    return caplog


def _data():
    return {"train": ToyVideos(12), "val": ToyVideos(8)}


def _run(run_dir, lr=0.05, **trainer):
    recipe = toy_recipe(run_dir, **{"max_steps": 8, "val_check_interval": 3, **trainer})
    recipe.optim.lr = lr
    return recipe


def _train(recipe, crash=None, resume=None, **kw):
    """fit with a fresh ToyMethod under a fixed init; ``crash``: stop after that many steps."""
    torch.manual_seed(0)
    method = ToyMethod()
    if crash is None:
        result = fit(recipe, method=method, datasets=_data(), resume=resume, **kw)
        return method, result
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(recipe, method=method, datasets=_data(), resume=resume, callbacks=[Crash(crash)], **kw)
    return method, None


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _complete(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt") if is_complete(p))


# ------------------------------------------------------------------------------------ one run per folder
def test_fresh_fit_into_a_folder_with_checkpoints_is_refused_and_overwrite_starts_over(tmp_path):
    run = tmp_path / "run"
    _train(_run(run, lr=0.05))
    before = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError) as err:
        _train(_run(run, lr=0.1))
    msg = str(err.value)
    assert msg.startswith(f"{run / 'checkpoints'} holds the checkpoints of an earlier run (newest step=0000")
    assert "--resume auto" in msg and "--overwrite" in msg and "\n" not in msg
    assert (run / "config.yaml").read_text() == before  # refused before anything was written
    # overwrite: the earlier run's checkpoints, logs and results go first
    (run / "bad_files.txt").write_text("old.mp4\tbroken\n")
    (run / "report").mkdir(exist_ok=True)
    (run / "report" / "test_results.json").write_text("{}")
    (run / "notes.txt").write_text("mine")  # not the run's: stays
    method, _ = _train(_run(run, lr=0.1, max_steps=4), overwrite=True)
    assert _complete(run) == ["step=000002.ckpt", "step=000004.ckpt"]
    for name in _complete(run):
        assert load_checkpoint(run / "checkpoints" / name)["tubelet_run"]["recipe"]["optim"]["lr"] == 0.1
    assert not (run / "bad_files.txt").exists() and not (run / "report" / "test_results.json").exists()
    assert (run / "notes.txt").read_text() == "mine"
    rows = list(csv.DictReader(open(run / "logs" / "csv" / "metrics.csv")))
    assert sorted(int(r["step"]) for r in rows if r.get("train/loss")) == [0, 1, 2, 3]  # this run's alone
    assert load_recipe(run / "config.yaml").optim.lr == 0.1
    with pytest.raises(ConfigError, match="pass one of them"):
        fit(_run(run), method=ToyMethod(), datasets=_data(), resume="auto", overwrite=True)


def test_resume_auto_passes_over_another_runs_checkpoints(tmp_path, console):
    """The folder holds an old run's step 9 (lr 0.05) and this run's steps 2 and 4 (lr 0.1, killed at step 5):
    --resume auto takes step 4, not the old run's newer step 9, and ends with this run's weights."""
    straight, _ = _train(_run(tmp_path / "ref", lr=0.1))
    run = tmp_path / "run"
    _train(_run(run, lr=0.05, max_steps=9, checkpoint_every_n_steps=3, keep_last_k=1))  # the old run: step 9
    _train(_run(tmp_path / "new", lr=0.1), crash=5)  # this run, killed after step 5 (elsewhere: a fresh fit here is refused)
    for p in (tmp_path / "new" / "checkpoints").iterdir():
        shutil.copy2(p, run / "checkpoints" / p.name)
    resumed, result = _train(_run(run, lr=0.1), resume="auto")
    _assert_same_weights(straight, resumed)
    old = run / "checkpoints" / "step=000009.ckpt"
    assert f"skipping checkpoint {old}: another run's" in console.text
    assert f"resuming from {run / 'checkpoints' / 'step=000004.ckpt'}" in console.text
    assert is_complete(old)  # another run's checkpoint is not this run's to delete
    assert _complete(run) == ["step=000006.ckpt", "step=000008.ckpt", "step=000009.ckpt"]


def test_resume_continues_the_recorded_recipe(tmp_path, console):
    """A change of the run's maths on resume is refused naming the key and both values; a change of how it
    runs (logging interval, keep_last_k) is applied, said in one line, and written to config.yaml."""
    straight, _ = _train(_run(tmp_path / "ref"))
    run = tmp_path / "run"
    _train(_run(run), crash=5)
    config = (run / "config.yaml").read_text()
    for key, value, shown in (("lr", 0.1, "optim.lr recorded 0.05, now 0.1"),
                              ("max_steps", 10, "trainer.max_steps recorded 8, now 10")):
        recipe = _run(run, **({"lr": value} if key == "lr" else {key: value}))
        with pytest.raises(CheckpointError) as err:
            _train(recipe, resume="auto")
        msg = str(err.value)
        assert msg.startswith(f"{run / 'checkpoints' / 'step=000004.ckpt'}: checkpoint of another run: {shown}; "
                              "a resumed run continues its recorded recipe"), msg
        assert (run / "config.yaml").read_text() == config  # nothing written
        with pytest.raises(CheckpointError, match=shown):  # the same for an explicit path
            _train(recipe, resume=run / "checkpoints" / "step=000002.ckpt")
    resumed, _ = _train(_run(run, log_every_n_steps=2, keep_last_k=3), resume="auto")
    _assert_same_weights(straight, resumed)
    assert "resuming with changed settings: trainer.keep_last_k 2 -> 3, trainer.log_every_n_steps 1 -> 2" in console.text
    ran = load_recipe(run / "config.yaml")
    assert (ran.trainer.log_every_n_steps, ran.trainer.keep_last_k) == (2, 3)


def test_a_checkpoint_without_a_recorded_recipe_is_not_resumed(tmp_path):
    run = tmp_path / "run"
    _train(_run(run, max_steps=4))
    ckpt = run / "checkpoints" / "step=000004.ckpt"
    state = torch.load(ckpt, weights_only=True)
    del state["tubelet_run"]
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=f"^{ckpt}: checkpoint records no recipe"):
        _train(_run(run, max_steps=4), resume=ckpt)


# ------------------------------------------------------------------------------------ checkpoint hygiene
def test_keep_last_k_holds_across_resumes(tmp_path):
    """Lightning's own top-k forgets the files of the runs before a resume: each resume left one more."""
    run = tmp_path / "run"
    recipe = _run(run, max_steps=14, keep_last_k=2)
    _train(recipe, crash=5)
    assert _complete(run) == ["step=000002.ckpt", "step=000004.ckpt"]
    _train(recipe, crash=9, resume="auto")
    assert _complete(run) == ["step=000006.ckpt", "step=000008.ckpt"]
    _train(recipe, resume="auto")
    assert _complete(run) == ["step=000012.ckpt", "step=000014.ckpt"]
    assert len(list((run / "checkpoints").glob("*.safetensors"))) == 2  # weights go with their checkpoint


def test_files_of_killed_writes_are_removed_at_the_next_start(tmp_path, console):
    run = tmp_path / "run"
    _train(_run(run), crash=5)
    ck = run / "checkpoints"
    stale = [ck / ".step=000006.ckpt.0123abcd.tmp", ck / "step=000006-89abcdef.safetensors",
             ck / ".step=000006-89abcdef.safetensors.deadbeef.tmp", run / ".method.safetensors.cafe0123.tmp",
             run / "logs" / "csv" / ".metrics.csv.5eed5eed.tmp",  # the CSV log is replaced atomically too
             run / "report" / ".index.html.0badc0de.tmp"]  # and so is the report
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    _train(_run(run), resume="auto")
    assert [p for p in stale if p.exists()] == []
    for p in stale:
        assert f"removed {p}: left by a write that was killed" in console.text
    assert not [p for p in ck.iterdir() if p.name.startswith(".")]


def test_resume_auto_says_why_it_skips_each_checkpoint(tmp_path, console):
    run = tmp_path / "run"
    straight, _ = _train(_run(tmp_path / "ref"))
    _train(_run(run, keep_last_k=3), crash=7)  # steps 2, 4, 6
    ck = run / "checkpoints"
    (w6,) = ck.glob("step=000006-*.safetensors")
    data = bytearray(w6.read_bytes())
    data[-1] ^= 1
    w6.write_bytes(bytes(data))  # same size, other bytes
    (w4,) = ck.glob("step=000004-*.safetensors")
    w4.write_bytes(w4.read_bytes()[:-8])  # truncated
    resumed, _ = _train(_run(run, keep_last_k=3), resume="auto")
    assert f"skipping checkpoint {ck / 'step=000006.ckpt'}: checksum mismatch" in console.text
    assert f"skipping checkpoint {ck / 'step=000004.ckpt'}: incomplete write" in console.text
    assert f"resuming from {ck / 'step=000002.ckpt'}" in console.text
    _assert_same_weights(straight, resumed)


def test_metrics_json_is_complete_after_a_resume_from_the_final_checkpoint(tmp_path):
    run = tmp_path / "run"
    _train(_run(run, max_steps=6))  # validation at steps 3 and 6
    final = json.loads((run / "metrics.json").read_text())
    assert {"val/top1", "train/loss", "train/acc", "lr", "peak_lr"} <= set(final)
    _train(_run(run, max_steps=6), resume="auto")  # nothing left to train
    assert json.loads((run / "metrics.json").read_text()) == final
    # killed after the final checkpoint, before metrics.json: the checkpoint's record of the metrics
    (run / "metrics.json").unlink()
    _, result = _train(_run(run, max_steps=6), resume="auto")
    got = json.loads((run / "metrics.json").read_text())
    saved = load_checkpoint(run / "checkpoints" / "step=000006.ckpt")["tubelet_metrics"]
    assert got == result.metrics and got["global_step"] == 6
    for key in ("train/loss", "train/acc", "lr"):  # the final step's, as the uninterrupted run had them
        assert got[key] == saved[key] == final[key], key
    assert got["val/top1"] == saved["val/top1"]  # the last validation before that checkpoint


def test_bad_files_txt_is_written_when_the_failure_budget_stops_the_run(tmp_path, videos_dir):
    """Both bad files are listed when the budget stops the run from a loader worker: the dataset used to stop
    it there itself, before the main process had seen the second file."""
    from tubelet.config import from_dict
    from tubelet.data.builder import build_dataset

    good = ["v_SoccerJuggling_g23_c01.avi", "WUzgd7C1pWA.mp4", "unordered.mov", "bbb_480p_vp9_opus_1second.webm"]
    rows = [good[i % 4] for i in range(10)] + ["corrupt_truncated.mp4", "corrupted.mp4"]
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{i % 4}\n" for i, p in enumerate(rows)))
    recipe = from_dict({
        **TINY_RECIPE, "run_dir": str(tmp_path / "run"),
        "data": {"kind": "manifest", "train": str(manifest), "root": str(videos_dir), "num_frames": 4,
                 "crop_size": 16, "batch_size": 4, "num_workers": 1, "max_failure_fraction": 0.1,
                 "augment": {"short_side": [16, 20]}},
        "trainer": {**TINY_RECIPE["trainer"], "max_steps": 12, "val_check_interval": None},
    })
    dataset = build_dataset(recipe.data, "train", seed=recipe.seed)
    with pytest.raises(DataError) as err:
        fit(recipe, datasets={"train": dataset})
    listed = sorted(line.split("\t")[0] for line in (tmp_path / "run" / "bad_files.txt").read_text().splitlines())
    assert listed == [str(videos_dir / "corrupt_truncated.mp4"), str(videos_dir / "corrupted.mp4")]
    # the main process's one error, not a loader worker's traceback
    assert str(err.value).startswith("2 of 12 samples failed to load (max_failure_fraction=0.1)")
    assert dataset.max_failure_fraction == 0.1  # the dataset's own budget is back for whatever reads it next


def test_the_failure_budget_counts_the_files_found_before_a_resume(tmp_path):
    """The bad files found before a resume are in its checkpoint: the list and the budget cover the run."""
    from tubelet.data.mixing import BadSample

    class Broken(ToyVideos):
        def __getitem__(self, index):
            return BadSample(index, f"bad{index}.mp4", "broken") if index in (0, 1) else super().__getitem__(index)

    run = tmp_path / "run"
    recipe = _run(run, max_steps=8)
    recipe.data.max_failure_fraction = 0.2  # 2 of 12 files
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(recipe, method=ToyMethod(), datasets={"train": Broken(12), "val": None}, callbacks=[Crash(5)])
    assert sorted((run / "bad_files.txt").read_text().splitlines()) == ["bad0.mp4\tbroken", "bad1.mp4\tbroken"]
    state = load_checkpoint(run / "checkpoints" / "step=000004.ckpt")
    assert sorted(p for _, p, _ in state["tubelet_module"]["bad_files"]) == ["bad0.mp4", "bad1.mp4"]
    fit(recipe, method=ToyMethod(), datasets={"train": Broken(12), "val": None}, resume="auto")
    assert sorted((run / "bad_files.txt").read_text().splitlines()) == ["bad0.mp4\tbroken", "bad1.mp4\tbroken"]


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_overwrite_and_refusal_are_one_line(tmp_path, capsys):
    from conftest import error_lines

    from tubelet.cli.main import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_RECIPE, "run_dir": str(tmp_path / "run")}))
    assert main(["fit", "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["fit", "--config", str(cfg), "optim.lr=0.01"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "holds the checkpoints of an earlier run" in lines[0]
    assert main(["fit", "--config", str(cfg), "optim.lr=0.01", "--overwrite"]) == 0
    assert load_recipe(tmp_path / "run" / "config.yaml").optim.lr == 0.01
    capsys.readouterr()
    assert main(["fit", "--config", str(cfg), "--resume", "auto", "optim.lr=0.02"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "checkpoint of another run: optim.lr recorded 0.01, now 0.02" in lines[0]


def test_resume_with_another_method_under_the_same_recipe_names_the_tensor(tmp_path):
    """From Python a method the recipe does not describe can be passed: its shapes are checked against the
    checkpoint before anything loads."""
    run = tmp_path / "run"
    _train(_run(run, max_steps=4))
    with pytest.raises(CheckpointError, match=r"first mismatched tensor 'method\.backbone\.head\.weight': "
                                              r"checkpoint \(4, 8\) vs run \(5, 8\)"):
        fit(_run(run, max_steps=4), method=ToyMethod(num_classes=5), datasets=_data(), resume="auto")


def test_a_resume_first_brings_the_folder_back_to_keep_last_k(tmp_path, console):
    """Killed between a checkpoint's rename and the removal of the oldest, a run leaves keep_last_k + 1: the
    next start removes the oldest before training, so its first save never makes keep_last_k + 2."""
    from lightning.pytorch.callbacks import Callback

    run = tmp_path / "run"
    _train(_run(run, keep_last_k=3), crash=7)  # steps 2, 4, 6: as a kill before the removal of step 2 leaves them

    class Count(Callback):
        def __init__(self):
            self.at_start, self.after_saves = None, []

        def on_train_start(self, *args):
            self.at_start = _complete(run)

        def on_train_batch_end(self, *args):
            self.after_saves.append(len(_complete(run)))

    count = Count()
    torch.manual_seed(0)
    fit(_run(run, keep_last_k=2), method=ToyMethod(), datasets=_data(), resume="auto", callbacks=[count])
    assert count.at_start == ["step=000004.ckpt", "step=000006.ckpt"]
    assert f"removed {run / 'checkpoints' / 'step=000002.ckpt'}: older than the newest trainer.keep_last_k=2" in console.text
    assert max(count.after_saves) == 2
