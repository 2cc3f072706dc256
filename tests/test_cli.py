"""The `mnistlab` command as a user runs it: a real process, real output, real exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mnistlab import api
from mnistlab import bench as bench_module
from mnistlab.checkpoint import MODEL_FILE, shipped_dir
from mnistlab.cli import main
from mnistlab.training.engine import Trainer


def mnistlab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mnistlab", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_models_and_summary():
    out = mnistlab("models")
    assert out.returncode == 0
    assert "93,322" in out.stdout and "3,274,634" in out.stdout and "325,418" in out.stdout
    summary = mnistlab("summary", "keras-cnn").stdout
    for count in ("320", "18,496", "36,928", "650", "Total params: 93,322"):
        assert count in summary
    # a recipe's model, with the recipe's arguments (fast-cnn 32/64 on the middle 22x22, hidden 128)
    recipe = mnistlab("summary", "fast").stdout
    assert 'Model: "fast-cnn (recipe fast)"' in recipe and "Total params: 94,282" in recipe
    assert "(None, 32, 10, 10)" in recipe  # the unpadded stem on the 22x22 that the crop leaves
    assert "hidden (Linear)              (None, 128)               73,856" in recipe
    shipped = mnistlab("summary", "default").stdout
    assert 'Model: "mnistlab-cnn (default)"' in shipped and "Total params: 307,370" in shipped
    unknown = mnistlab("summary", "fsat")
    assert unknown.returncode == 1 and "not a model, a recipe or a checkpoint" in unknown.stderr


def test_listing_the_recipes_does_not_wait_for_pytorch():
    # importing torch takes seconds; a listing reads the TOML files alone
    code = ("import sys; from mnistlab.cli import main; code = main(['recipes']); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "quick (default)" in done.stdout
    assert done.stdout.strip().endswith("no torch")


def test_recipes_and_datasets():
    recipes = mnistlab("recipes").stdout
    assert "keras-cnn" in recipes and "quick (default)" in recipes and "claims 98.91%" in recipes
    datasets = mnistlab("datasets").stdout
    assert "mnist" in datasets and "shipped" in datasets and "fashion-mnist" in datasets
    verify = mnistlab("datasets", "verify", "mnist")
    assert verify.returncode == 0
    assert [line[:4] for line in verify.stdout.splitlines()] == ["ok  "] * 4


def test_verifying_every_dataset_skips_the_ones_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path))  # an empty cache: only MNIST is here
    every = mnistlab("datasets", "verify")
    assert every.returncode == 0, every.stdout
    assert "-    fashion-mnist  not downloaded" in every.stdout
    assert [line[:4] for line in every.stdout.splitlines()].count("ok  ") == 4
    named = mnistlab("datasets", "verify", "kmnist")  # asked for by name, missing files fail
    assert named.returncode == 1 and named.stdout.count("FAIL") == 4


def test_datasets_heeds_its_name_and_data_dir(tmp_path, capsys):
    """`datasets list NAME` listed every dataset, and `datasets verify --data-dir DIR` without
    a name verified the cache, not DIR, and said ok."""
    assert main(["datasets", "list", "kmnist"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("kmnist ") and not any(line.startswith("mnist ") for line in listed)
    assert main(["datasets", "list", "emnist"]) == 1
    assert capsys.readouterr().err.startswith("mnistlab: error: unknown dataset 'emnist'; known: ")
    for folder, why in ((tmp_path / "none", "does not exist"), (__file__, "is not a folder")):
        assert main(["datasets", "verify", "mnist", "--data-dir", str(folder)]) == 1  # not 4 FAILs
        assert capsys.readouterr() == ("", f"mnistlab: error: --data-dir {folder} {why}: give the "
                                           "folder that holds mnist's IDX files\n")
    for argv in (["verify"], ["list"], ["list", "mnist"], []):
        assert main(["datasets", *argv, "--data-dir", str(tmp_path)]) == 1
        out, err = capsys.readouterr()
        assert (out, err) == ("", "mnistlab: error: --data-dir checks a folder of IDX files against "
                                  "a dataset's checksums: give the dataset's name (datasets verify "
                                  "NAME --data-dir DIR)\n")


def test_train_seeds_stopped_then_run_again_continues_where_it_stopped(tmp_path, small_mnist,
                                                                     monkeypatch, capsys):
    """An interrupted `train --seeds N` could not be continued as a whole: running it again
    refused the first seed's folder ("already holds a run")."""
    def argv(out):
        return ["train", "--recipe", "fast", "--steps", "8", "--seeds", "3", "--out", str(out),
                "--device", "cpu", "--data-dir", str(small_mnist), "--no-report", "--quiet"]

    class StopsSeed1AtStep3(Trainer):  # the engine's own Ctrl-C path; a resumed run goes on
        def __init__(self, *args, **kwargs):
            if kwargs["seed"] == 1 and kwargs.get("resume_from") is None:
                kwargs["on_step"] = lambda trainer, done: done == 3 and trainer.request_stop()
            super().__init__(*args, **kwargs)

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(api, "Trainer", StopsSeed1AtStep3)
        assert main(argv(stopped)) == 130
    printed = capsys.readouterr().out
    assert printed.endswith(f"or all 3 seeds with the same command again: mnistlab "
                            f"{' '.join(argv(stopped))}\n")
    assert not (stopped / "seed-2").exists()
    assert main(argv(stopped)) == 0  # seed 0 tested again, seed 1 continued, seed 2 trained
    whole = tmp_path / "whole"
    assert main(argv(whole)) == 0
    accuracies = [line.split(";")[0] for line in capsys.readouterr().out.splitlines()
                  if line.startswith("3 seeds: test accuracy")]
    assert len(accuracies) == 2 and accuracies[0] == accuracies[1]  # the same weights
    assert main([*argv(stopped)[:4], "9", *argv(stopped)[5:]]) == 1  # 9 steps: another run
    assert capsys.readouterr().err == (f"mnistlab: error: {stopped / 'seed-0'} holds another run "
                                       "(its [train] differs): choose another --out\n")
    for other in (["--data-dir", str(tmp_path)], ["--init", "default"]):  # other starts too
        assert main([*argv(stopped), *other]) == 1
    _, err = capsys.readouterr()
    assert err.splitlines() == [f"mnistlab: error: {stopped / 'seed-0'} holds another run (its "
                                f"{what} differs): choose another --out"
                                for what in ("data folder", "starting checkpoint")]


def test_train_seeds_odd_cases_are_one_line_or_a_summary(tmp_path, small_mnist, capsys):
    """--seeds 1 ended in a traceback (a standard deviation of one number); --seeds into a
    run's own folder nested runs inside it; --resume took --data-dir and ignored it."""
    base = ["train", "--recipe", "fast", "--steps", "1", "--device", "cpu", "--data-dir",
            str(small_mnist), "--no-report", "--quiet"]
    assert main([*base, "--seeds", "1", "--out", str(tmp_path / "one")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1].startswith("1 seed: test accuracy ")
    assert "\ntrained 1 step in " in printed  # not "1 steps"
    run = tmp_path / "one" / "seed-0"
    assert main([*base, "--seeds", "2", "--out", str(run)]) == 1
    assert capsys.readouterr().err == (f"mnistlab: error: {run} is a run's own folder; --seeds "
                                       "puts its runs in OUT/seed-K: choose another --out\n")
    assert main(["train", "--resume", str(run), "--data-dir", str(small_mnist)]) == 1
    assert capsys.readouterr().err == ("mnistlab: error: --resume continues a run as it was "
                                       "recorded: give no --recipe, --epochs, --steps, --seed, "
                                       "--seeds, --out, --init or --data-dir with it\n")
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == []  # nothing nested in it


def test_train_then_evaluate(tmp_path, small_mnist):
    run = tmp_path / "run"
    out = mnistlab("train", "--recipe", "keras-cnn", "--steps", "40", "--out", run,
                   "--data-dir", small_mnist, "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout and f"run saved in {run}" in out.stdout
    assert "\r" not in out.stderr  # no live progress line when output is not a terminal
    ev = mnistlab("evaluate", run, "--json")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["count"] == 600 and len(report["confusion"]) == 10
    assert sum(map(sum, report["confusion"])) == 600
    text = mnistlab("evaluate", run).stdout
    assert "per-class accuracy" in text and "confusion matrix" in text
    # resuming a finished run trains nothing: it says so, and tests the same model again
    recorded = json.loads((run / "model.json").read_text())["metrics"]
    again = mnistlab("train", "--resume", run, "--device", "cpu", "--no-report")
    assert again.returncode == 0, again.stderr
    assert f"{run} has trained all 40 steps: testing it again" in again.stdout
    accuracy = next(line for line in out.stdout.splitlines() if line.startswith("test accuracy"))
    assert accuracy in again.stdout and "images/s" not in again.stdout
    # and loses nothing it had recorded: validation, test and time, one test in the log
    assert json.loads((run / "model.json").read_text())["metrics"] == recorded
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("test") == 1


@pytest.mark.parametrize("args, message", [
    (["train", "--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'; shipped recipes"),
    (["train", "--recipe", "fsat"], "unknown recipe 'fsat' (did you mean 'fast'?)"),
    (["summary", "keras_cnn"], "(did you mean 'keras-cnn'?)"),
    (["train", "--recipe", "missing.toml"], "missing.toml: no such recipe file"),
    (["evaluate", "nowhere"], "nowhere: no such checkpoint file or run folder"),
    (["train", "--resume", "nowhere"], "nowhere: nothing to resume: no such run folder"),
    (["train", "--resume", "/dev/null"], "/dev/null: nothing to resume: a file, not a run folder"),
    (["train", "--steps", "1", "--data-dir", "/dev/null"],
     "/dev/null: a file, not a folder of IDX files or images"),
    (["train", "--steps", "1", "--out", "/dev/null"],
     "cannot create the run folder /dev/null: something that is not a folder is in its place"),
    (["train", "--resume", "x", "--seed", "3"], "give no --recipe"),
    (["train", "--device", "tpu", "--steps", "1"], "expected auto, cpu, cuda, mps"),
    (["summary", "lenet"], "'lenet' is not a model, a recipe or a checkpoint"),
])
def test_user_errors_are_one_clear_line(tmp_path, args, message):
    out = mnistlab(*args, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.startswith("mnistlab: error: ") and message in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_a_failing_torch_compile_is_one_clear_line(tmp_path, small_mnist, monkeypatch):
    # no C++ compiler for the CPU, and an empty compile cache, so that nothing cached answers
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    out = mnistlab("train", "--recipe", "fast", "--steps", "3", "--device", "cpu", "--compile",
                   "--data-dir", small_mnist, "--out", tmp_path / "run", "--no-report")
    assert out.returncode == 1
    assert out.stderr.startswith("mnistlab: error: torch.compile failed (")
    assert "train without --compile" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_bad_recipe_file_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = ""\n[model]\nname = "softmax"\n[optimizer]\nname = "sgd"\n'
                   'lr = "fast"\n[train]\nbatch_size = 10\nsteps = 1\n')
    out = mnistlab("train", "--recipe", bad)
    assert out.returncode == 1 and "bad.toml" in out.stderr and "optimizer.lr" in out.stderr


def test_missing_data_leaves_no_run_folder(tmp_path):
    out = mnistlab("train", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "run", cwd=tmp_path)
    assert out.returncode == 1 and "no such folder" in out.stderr
    assert not (tmp_path / "run").exists()


def test_bench_times_a_recipe_against_the_plain_loop(tmp_path):
    recipe = tmp_path / "short.toml"
    recipe.write_text('name = "short"\ndescription = "fast-cnn, 60 steps"\n'
                      '[model]\nname = "fast-cnn"\nwidths = [32, 64, 64]\n'
                      '[optimizer]\nname = "adamw"\nlr = 1e-2\n'
                      '[train]\nbatch_size = 128\nsteps = 60\n')
    out = mnistlab("bench", recipe, "--seeds", 2, "--device", "cpu", "--compile",
                   "--json", tmp_path / "bench.json")
    assert out.returncode == 0, out.stderr
    assert "recipe short on cpu" in out.stdout and "torch.compile, 2 seeds\n" in out.stdout
    assert "torch.compile, not counted above" in out.stdout
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["seeds"] == 2 and len(figures["accuracies"]) == 2
    assert 0.85 < figures["accuracy_mean"] < 1  # 60 steps: about 93%
    assert all(seconds > 0 for seconds in figures["train_seconds"])
    # the second seed's network reuses what the first one compiled
    first, second = figures["compile_seconds"]
    assert figures["compiled"] and first > 10 * second > 0
    for rate in ("train_images_per_s", "baseline_images_per_s", "infer_batch1_images_per_s",
                 "infer_batch1024_images_per_s"):
        assert figures[rate] > 0


def test_bench_json_alone_prints_the_figures_and_only_them(tmp_path):
    """As evaluate's --json does; it took a file name only. --verbose's progress goes to stderr."""
    recipe = tmp_path / "short.toml"
    recipe.write_text('name = "short"\ndescription = "softmax, 20 steps"\n'
                      '[model]\nname = "softmax"\n[optimizer]\nname = "sgd"\nlr = 0.5\n'
                      '[train]\nbatch_size = 100\nsteps = 20\n')
    out = mnistlab("bench", recipe, "--seeds", 1, "--device", "cpu", "--json", "--verbose")
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert figures["seeds"] == 1 and 0.5 < figures["accuracy_mean"] < 1
    assert "step 20/20" in out.stderr or "trained 20 steps" in out.stderr


def test_a_bench_stopped_by_ctrl_c_stops_at_that_seed(monkeypatch, capsys):
    """The engine saves and returns on Ctrl-C; bench went on to the next seed, then failed on
    the stopped run's missing test (AttributeError). Its --verbose said to continue with
    `train --resume` on a temporary folder that the bench then removed."""
    seeds = []

    class StoppedAtStep3(Trainer):  # the engine's own Ctrl-C path, taken at step 3
        def __init__(self, *args, **kwargs):
            seeds.append(kwargs["seed"])
            super().__init__(*args, on_step=lambda trainer, done: done == 3 and trainer.request_stop(),
                             **kwargs)

    monkeypatch.setattr(bench_module, "Trainer", StoppedAtStep3)
    with pytest.raises(KeyboardInterrupt):
        bench_module.bench("fast", seeds=3, device="cpu", quiet=False)
    assert seeds == [0]
    assert capsys.readouterr().out.splitlines()[-1] == "stopped at step 3/237"


def test_loadtest_refuses_a_payload_it_would_not_send(tmp_path, capsys):
    """--payload json beside --image was dropped: the image file went as it is."""
    image = tmp_path / "seven.png"
    image.write_bytes(b"\x89PNG")  # refused before it is read
    assert main(["loadtest", "http://127.0.0.1:9", "--image", str(image), "--payload", "json"]) == 1
    assert capsys.readouterr() == ("", "mnistlab: error: --payload says how the MNIST digit is "
                                       "sent; --image sends its file as it is: give one of them\n")


def test_a_split_the_model_trained_on_is_said_to_be_one(capsys):
    """keras-cnn trains on train-full, which holds the validation images: its 99.74% on them
    was printed as any other measure."""
    note = ("note: {} trained on these images (its recipe's [train] split is train-full, which "
            "holds the validation split): not a measure of unseen digits")
    assert main(["evaluate", "keras-cnn", "--split", "validation", "--device", "cpu"]) == 0
    assert note.format("this model") in capsys.readouterr().out.splitlines()
    assert main(["ensemble", "keras-cnn", "default", "--split", "validation", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("note:")] == [
        note.format(shipped_dir("keras-cnn") / MODEL_FILE)]  # the default trained on "train"
    assert main(["evaluate", "keras-cnn", "--device", "cpu"]) == 0  # the test split: no note
    assert "note:" not in capsys.readouterr().out


def test_summary_reads_a_recipe_file_by_any_name_as_train_does(tmp_path, capsys):
    """A recipe file not named .toml (`myrecipe`, `my.TOML`) trained, but summary read it as a
    checkpoint: "not a valid safetensors file"."""
    recipe = (Path(__file__).parents[1] / "src" / "mnistlab" / "recipebook" / "fast.toml").read_text()
    for name in ("myrecipe", "my.TOML"):
        (tmp_path / name).write_text(recipe)
        assert main(["summary", str(tmp_path / name)]) == 0
        assert capsys.readouterr().out.startswith('Model: "fast-cnn (recipe fast)"')
    model_file = tmp_path / "no-suffix"  # a checkpoint by any name is still one
    model_file.write_bytes((shipped_dir("keras-cnn") / MODEL_FILE).read_bytes())
    assert main(["summary", str(model_file)]) == 0
    assert capsys.readouterr().out.startswith(f'Model: "keras-cnn ({model_file})"')
