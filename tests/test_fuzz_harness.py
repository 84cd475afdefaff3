"""fuzz/fuzz_decoders.py prints its FUZZ SUMMARY when libFuzzer ends the process. libFuzzer calls C
``exit()`` once ``-runs`` or ``-max_total_time`` is reached, which skips Python's ``atexit`` handlers; a
stand-in for atheris does the same here, so the check needs no atheris."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# atheris as far as the harness sees it: run the test function on each input file, then end the
# process the way libFuzzer does.
FAKE_ATHERIS = """
import contextlib, ctypes, runpy, sys, types

fake = types.ModuleType("atheris")
fake.instrument_imports = lambda **kw: contextlib.nullcontext()
state = {}

def Setup(argv, fn):
    state["fn"], state["files"] = fn, argv[1:]

def Fuzz():
    for name in state["files"]:
        with open(name, "rb") as f:
            state["fn"](f.read())
    ctypes.CDLL(None).exit(0)

fake.Setup, fake.Fuzz = Setup, Fuzz
sys.modules["atheris"] = fake
harness = sys.argv[1]
sys.argv = [harness, *sys.argv[2:]]
runpy.run_path(harness, run_name="__main__")
"""


def test_summary_is_printed_when_libfuzzer_exits(tmp_path, videos_dir):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    inputs = [videos_dir / "unordered.mov", videos_dir / "video_0.mov", garbage]
    env = {"PYTHONPATH": str(REPO / "src"), "TUBELET_FUZZ_CRASH_DIR": str(tmp_path / "findings"),
           "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", FAKE_ATHERIS, str(REPO / "fuzz" / "fuzz_decoders.py"),
                           *map(str, inputs)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1] == "FUZZ SUMMARY runs=3 ok=2 video_errors=1 findings=0", proc.stdout + proc.stderr
