"""SIGTERM/SIGINT: the handler's three regimes in-process; train.py stopped by a signal outside its loop; two
jax.distributed processes stopped as one by a SIGTERM to one of them."""

import os
import signal
import threading
import time

import pytest
from absl import flags

from roberta_jax.train import cli, preemption
from roberta_jax.train import workdir as workdir_files
from tests.train_runs import free_port, losses, run_train, wait_for_step


def kill_self(signum=signal.SIGTERM):
    """The signal delivered to this thread, the main one: its Python handler runs before the next line.
    (`os.kill` lets the kernel hand a process signal to any of its threads, and on a loaded machine the
    main thread then ran a few lines before the handler.)"""
    signal.pthread_kill(threading.get_ident(), signum)


# -- the handler, in-process ---------------------------------------------------------------------------------


def test_outside_the_loop_the_first_signal_raises_at_once_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    reached = []
    with pytest.raises(preemption.Interrupted, match="interrupted by SIGTERM; run the same command"):
        with preemption.handled():
            kill_self()
            reached.append("after the signal")
    assert reached == [] and signal.getsignal(signal.SIGTERM) is before


def test_error_handlers_of_the_code_it_lands_in_let_it_pass():
    with pytest.raises(preemption.Interrupted):
        with preemption.handled():
            try:
                kill_self()
            except Exception:  # noqa: BLE001 - e.g. a checkpoint restore setting an unreadable checkpoint aside
                pytest.fail("Interrupted was taken for an error")


def test_a_deferred_section_finishes_before_the_signal_is_raised():
    order = []
    with pytest.raises(preemption.Interrupted, match="SIGINT"):
        with preemption.handled():
            with preemption.deferred():
                kill_self(signal.SIGINT)
                order.append("section finished")
            order.append("after the section")
    assert order == ["section finished"]


def test_a_second_signal_acts_at_once():
    with pytest.raises(KeyboardInterrupt):  # SIGINT's own handler, put back by the first signal
        with preemption.handled(), preemption.deferred():
            kill_self(signal.SIGINT)
            kill_self(signal.SIGINT)


def test_in_the_loop_a_signal_is_polled_and_not_raised_once_acted_on():
    with preemption.handled():
        with preemption.polled() as stop:
            assert not stop.after(1)
            with preemption.deferred():  # an export inside the loop: the loop acts on it, not the section
                kill_self()
            assert stop.after(2) and stop.finished() and stop.reason() == "SIGTERM"


def test_a_signal_the_loop_has_not_acted_on_is_raised_as_it_ends():
    with preemption.handled(), pytest.raises(preemption.Interrupted):
        with preemption.polled() as stop:
            assert not stop.after(1) and not stop.finished()
            kill_self()  # during the last checkpoint's wait, say


def test_guarded_exits_75_with_one_line(monkeypatch, capsys):
    flag_values = flags.FlagValues()
    flags.DEFINE_bool("verbose", False, "", flag_values=flag_values)
    flag_values.mark_as_parsed()
    monkeypatch.setattr(flags, "FLAGS", flag_values)
    with pytest.raises(SystemExit) as exit_info:
        cli.guarded(lambda argv: kill_self(), ["train.py"])
    assert exit_info.value.code == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == ("train.py: interrupted by SIGTERM; run the same command to resume from the "
                                       "newest checkpoint\n")


# -- train.py: a signal outside the loop ------------------------------------------------------------------------

# Run as `python slow_phase.py train.py ARGS`: train.py paused in one phase, $SLOW_PHASE: "create_state" (the model
# built in its sharding) or a directory of the workdir, whose first file renamed into place (written whole
# under a temporary name) waits first. The pause writes what it holds into $SLOW_PHASE_MARK, then sleeps until a
# signal has come (its handler puts back the one from before) or, in a section that defers it, goes on.
SLOW_PHASE = """
import os, runpy, signal, sys, time

from roberta_jax.train import runtime

phase, mark = os.environ["SLOW_PHASE"], os.environ["SLOW_PHASE_MARK"]


def pause(what):
    with open(mark, "w") as f:
        f.write(what)
    handler, start = signal.getsignal(signal.SIGTERM), time.time()
    while signal.getsignal(signal.SIGTERM) is handler and time.time() - start < 300:
        time.sleep(0.05)


def slow_rename(original):
    def rename(src, dst, *args, **kwargs):
        dst = os.path.abspath(dst)
        if (dst == phase or dst.startswith(phase + os.sep)) and not os.path.exists(mark):
            pause(dst)
        return original(src, dst, *args, **kwargs)
    return rename


if phase == "create_state":
    create_state = runtime.Runtime.create_state
    runtime.Runtime.create_state = lambda *args: pause("create_state") or create_state(*args)
else:
    os.replace, os.rename = slow_rename(os.replace), slow_rename(os.rename)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def interrupted_in(phase, workdir, corpus, tmp_path, *args) -> str:
    """train.py paused in `phase` (`SLOW_PHASE`), sent SIGTERM there: asserts it exits 75 with the one-line message
    and leaves no lock; returns what the pause held (the path it was about to rename into place)."""
    wrapper, mark = tmp_path / "slow_phase.py", tmp_path / "paused"
    wrapper.write_text(SLOW_PHASE)
    mark.unlink(missing_ok=True)
    proc = run_train(workdir, corpus, *args, background=True, wrapper=[str(wrapper)],
                     env={"SLOW_PHASE": phase, "SLOW_PHASE_MARK": str(mark)})
    start = time.time()
    while not mark.exists():
        assert proc.poll() is None and time.time() - start < 120, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == cli.EXIT_INTERRUPTED, output[-3000:]
    assert output.rstrip().endswith("train.py: interrupted by SIGTERM; run the same command to resume from the "
                                    "newest checkpoint")
    assert not (workdir / workdir_files.LOCK).exists()
    return mark.read_text()


def test_sigterm_in_any_phase_exits_75_unlocked_with_nothing_half_written(tmp_path, corpus):
    workdir = tmp_path / "run"
    args = ["--config.total_steps=3", "--config.export_hf=True", f"--config.compilation_cache_dir={tmp_path}/cache"]
    # Building the data: the first cache file, written whole under a temporary name, is not renamed into place.
    renaming = interrupted_in(str(workdir / workdir_files.DATA_CACHE), workdir, corpus, tmp_path, *args)
    assert not os.path.exists(renaming) and not (workdir / workdir_files.CONTRACT).exists()
    # Building the model, after the data (which the leftovers above did not disturb).
    assert interrupted_in("create_state", workdir, corpus, tmp_path, *args) == "create_state"
    assert not (workdir / workdir_files.CHECKPOINTS).exists()
    # Swapping the export into place, after training (a `preemption.deferred` section): the swap is done first.
    hf = workdir / workdir_files.HF_EXPORT
    assert interrupted_in(str(hf), workdir, corpus, tmp_path, *args) == str(hf)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(hf))
    assert os.listdir(workdir / workdir_files.CHECKPOINTS) == ["3"]
    # The same command finishes the run: no step trained again, the export written.
    run_train(workdir, corpus, *args)
    assert sorted(losses(workdir)) == [1, 2, 3]
    assert {"config.json", "model.safetensors"} <= set(os.listdir(hf))


# -- two hosts -----------------------------------------------------------------------------------------------


def launch_pair(workdir, *args):
    """Two jax.distributed processes of one CPU device each on `workdir`, in the background."""
    port = free_port()
    return [run_train(workdir, *args, "--config.distributed.initialize=True",
                      f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                      "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                      devices=1, background=True)
            for i in range(2)]


def finish(procs, codes):
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == codes, outputs[0][-3000:] + "\n" + outputs[1][-3000:]
    return outputs


def test_sigterm_to_one_of_two_hosts_stops_both_after_the_same_step(tmp_path, corpus):
    args = [corpus, "--config.total_steps=40", "--config.checkpoint.every_steps=1000",
            f"--config.compilation_cache_dir={tmp_path}/cache"]
    finish(launch_pair(tmp_path / "straight", *args), [0, 0])

    workdir = tmp_path / "stopped"
    procs = launch_pair(workdir, *args)
    wait_for_step(workdir, procs[0], 4)
    seen = max(losses(workdir))
    procs[1].send_signal(signal.SIGTERM)  # process 0 gets nothing
    outputs = finish(procs, [cli.EXIT_INTERRUPTED, cli.EXIT_INTERRUPTED])
    [saved] = [int(name) for name in os.listdir(workdir / workdir_files.CHECKPOINTS)]  # one save, by both
    # Process 1 published at its first check after the signal, past the step process 0 had logged (the log is
    # buffered: it may lag by a score of steps), and both stopped LAG steps later, well before the end.
    assert seen < saved < 40
    for output in outputs:
        assert f"SIGTERM on process 1 at step {saved - preemption.LAG}: saved step {saved}, stopping" in output
    assert max(losses(workdir)) == saved

    finish(launch_pair(workdir, *args), [0, 0])  # the same command goes on as if never stopped
    straight, resumed = losses(tmp_path / "straight"), losses(workdir)
    assert sorted(resumed) == sorted(straight) == list(range(1, 41))
    assert max(abs(resumed[s] - straight[s]) for s in straight) <= 1e-6
