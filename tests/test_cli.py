"""The ``tubelet`` command line: overrides anywhere after the recipe, one-line errors after the usage line,
``tubelet models`` matching and ``tubelet recipes``."""

import argparse

import pytest
import torch
import yaml

from tubelet.cli import fit as cli_fit
from tubelet.cli import test as cli_test
from tubelet.cli._recipe import load_from_args
from tubelet.cli.main import build_parser, main
from tubelet.config import Recipe, from_dict, list_recipes, load_recipe
from tubelet.config.loader import resolve_recipe
from tubelet.models.registry import list_models


def _command(argv: list[str]) -> argparse.ArgumentParser:
    """The (sub-)subparser that ``argv``'s leading command words select."""
    parser = build_parser()
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 1 and stderr = the subcommand's usage + one error line; return that line."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    command = _command(argv)
    usage = command.format_usage()
    assert err.startswith(usage), err
    rest = err[len(usage):].splitlines()
    assert len(rest) == 1, rest
    prefix = f"{command.prog}: error: "
    assert rest[0].startswith(prefix)
    return rest[0][len(prefix):]


@pytest.fixture
def recipes_seen(monkeypatch):
    """Replace fit/test's run with one that records the recipe the arguments load."""
    seen: list[tuple[Recipe, argparse.Namespace]] = []
    for module in (cli_fit, cli_test):
        monkeypatch.setattr(module, "run", lambda args: seen.append((load_from_args(args), args)) or 0)
    return seen


def test_overrides_may_follow_the_options(recipes_seen, tmp_path):
    ckpt = str(tmp_path / "x.ckpt")
    assert main(["test", "quickstart", "--checkpoint", ckpt, "data.test_clips=3", "data.test_crops=3"]) == 0
    recipe, args = recipes_seen[-1]
    assert (recipe.data.test_clips, recipe.data.test_crops, args.checkpoint) == (3, 3, ckpt)
    # before and after an option, in command-line order (the last one wins)
    assert main(["fit", "quickstart", "trainer.max_steps=2", "--resume", "auto", "trainer.max_steps=5",
                 "data.batch_size=3"]) == 0
    recipe, args = recipes_seen[-1]
    assert (recipe.trainer.max_steps, recipe.data.batch_size, args.resume) == (5, 3, "auto")
    assert args.overrides == ["quickstart", "trainer.max_steps=2", "trainer.max_steps=5", "data.batch_size=3"]
    assert main(["fit", "--config", "quickstart", "--resume", "auto", "trainer.max_steps=7"]) == 0
    assert recipes_seen[-1][0].trainer.max_steps == 7


def test_a_stray_word_after_the_options_is_still_an_argparse_error(recipes_seen, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "quickstart", "--resume", "auto", "stray"])
    assert exc.value.code == 2 and "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # commands without overrides take no extra words either
        main(["models", "vit", "k=v"])
    assert exc.value.code == 2
    assert recipes_seen == []


def test_an_override_type_error_names_the_override(capsys):
    msg = _error(capsys, ["fit", "quickstart", "data.batch_size=abc"])
    assert msg == "data.batch_size=abc (command line): expected int"


@pytest.mark.parametrize("override, expected", [
    ("data.batch_size=-4", "at least 1"),
    ("data.num_frames=0", "at least 1"),
    ("data.crop_size=0", "at least 1"),
    ("data.num_workers=-2", "at least 0"),
    ("data.test_clips=0", "at least 1"),
    ("trainer.max_steps=-5", "at least 1 (or -1: no step limit, trainer.max_epochs ends training)"),
])
def test_a_size_or_count_out_of_range_is_one_line(capsys, override, expected):
    assert _error(capsys, ["fit", "quickstart", override]) == f"{override} (command line): expected {expected}"


def test_a_gpu_accelerator_without_a_gpu_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hint = "but no CUDA device is visible; trainer.accelerator=cpu or auto runs on the CPU"
    for value in ("gpu", "cuda"):
        msg = _error(capsys, ["fit", "quickstart", f"trainer.accelerator={value}", f"run_dir={tmp_path}"])
        assert msg == f"trainer.accelerator={value} {hint}"
    msg = _error(capsys, ["test", "quickstart", "--checkpoint", str(tmp_path / "x.ckpt"), "trainer.accelerator=gpu"])
    assert msg == f"trainer.accelerator=gpu {hint}"
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was built


def test_float16_precision_on_cpu_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for value in ("16-mixed", "16-true"):
        msg = _error(capsys, ["fit", "quickstart", f"trainer.precision={value}", f"run_dir={tmp_path}"])
        assert msg == (f"trainer.precision={value} is not supported on CPU (float16 needs a GPU); "
                       "use trainer.precision=bf16-mixed or 32-true")
    msg = _error(capsys, ["test", "quickstart", "--checkpoint", "x.ckpt", "trainer.precision=16-mixed"])
    assert msg.startswith("trainer.precision=16-mixed is not supported on CPU")
    msg = _error(capsys, ["fit", "quickstart", "trainer.precision=fp16"])
    assert msg == ("trainer.precision=fp16 (command line): expected one of 32-true, bf16-mixed, bf16-true, "
                   "16-mixed, 16-true, auto")


def test_a_video_given_as_manifest_is_one_line(capsys, tmp_path, videos_dir):
    clip = videos_dir / "WUzgd7C1pWA.mp4"
    hint = ("not a manifest (CSV or JSONL with path,label rows); use data.kind=folders with a folder of class "
            "subfolders, or list the file in a manifest")
    common = [f"run_dir={tmp_path / 'run'}", "trainer.num_threads=1"]
    msg = _error(capsys, ["fit", "quickstart", "data.kind=manifest", f"data.train={clip}", *common])
    assert msg == f"data.train={clip} looks like a video file, {hint}"
    renamed = tmp_path / "train.csv"  # a video behind a manifest's name: found by its bytes
    renamed.write_bytes(clip.read_bytes())
    msg = _error(capsys, ["fit", "quickstart", "data.kind=manifest", f"data.train={renamed}", *common])
    assert msg == f"data.train={renamed} is a binary file (a video?), {hint}"
    # the manifest checker reads the same way
    assert _error(capsys, ["data", "check", str(clip)]) == f"{clip} looks like a video file, {hint}"


def test_models_matches_a_word_as_substring_and_a_glob_as_glob(capsys):
    assert main(["models", "vit"]) == 0
    names = capsys.readouterr().out.split()
    assert names == [n for n in list_models() if "vit" in n] and "vit_tiny" in names and "mvitv2_s" in names
    assert main(["models", "vit_*"]) == 0
    assert capsys.readouterr().out.split() == [n for n in list_models() if n.startswith("vit_")]
    msg = _error(capsys, ["models", "vit_tinny"])
    assert msg.startswith("no registered model matches 'vit_tinny'; closest: vit_tiny")
    assert _error(capsys, ["models", "zzz*"]).startswith("no registered model matches 'zzz*'")


def test_recipes_lists_each_with_its_first_comment_line(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_recipes()
    demo = next(line for line in lines if line.split()[0] == "demo")
    assert demo.split(None, 1)[1] == "`tubelet demo`, video model: the quickstart ViT on 8-frame clips."


def test_recipe_description_is_its_first_sentence_cut_at_a_word(tmp_path):
    from tubelet.cli.recipes import description

    r = tmp_path / "r.yaml"
    # a sentence across comment lines, with an abbreviation and a citation that do not end it
    r.write_text("# Pre-training on K400 (Smith et al., arXiv 1234.5678, Sec.\n# 4): the first sentence.\n"
                 "# A second one.\nmodel: {}\n")
    assert description(r) == "Pre-training on K400 (Smith et al., arXiv 1234.5678, Sec. 4): the first sentence."
    assert description(r, limit=40) == "Pre-training on K400 (Smith et al..."
    r.write_text("model: {}  # not a description\n")
    assert description(r) == ""


def test_recipes_name_prints_the_recipe_with_its_base_merged(capsys):
    assert main(["recipes", "demo"]) == 0
    tree = yaml.safe_load(capsys.readouterr().out)
    base = yaml.safe_load(resolve_recipe("quickstart").read_text())
    child = yaml.safe_load(resolve_recipe("demo").read_text())
    assert child.pop("_base_") == "quickstart" and "_base_" not in tree
    assert tree == {**base, **child}  # demo only sets top-level keys over quickstart
    assert from_dict(tree) == load_recipe("demo")
    assert main(["recipes", "demo", "--full"]) == 0
    full = yaml.safe_load(capsys.readouterr().out)
    assert from_dict(full) == load_recipe("demo") and set(full) == set(Recipe.__dataclass_fields__)
    assert _error(capsys, ["recipes", "quickstrat"]).endswith("did you mean 'quickstart'?")
