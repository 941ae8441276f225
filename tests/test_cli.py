"""The entry points' shared command-line pieces: one-line errors for unknown config keys, the program's name
that starts them, the log filter."""

import importlib.util
import logging
import os
import subprocess
import sys
import types

import pytest
from absl import flags
from ml_collections import config_flags

from roberta_jax.train import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "config, override, message",
    [
        ("finetune/sst2.py", "--config.optimizer.peak_lrr=2e-5",
         "unknown config key 'optimizer.peak_lrr'; did you mean 'optimizer.peak_lr'?"),
        ("finetune/sst2.py", "--config.optimiser.peak_lr=2e-5",
         "unknown config key 'optimiser'; did you mean 'optimizer'?"),
        ("tiny.py", "--config.data.max_seq_lenght=64",
         "unknown config key 'data.max_seq_lenght'; did you mean 'data.max_seq_length'?"),
    ],
)
def test_unknown_config_key_exits_with_one_line_naming_the_nearest(config, override, message, capsys):
    argv = ["finetune.py", f"--config={REPO}/configs/{config}", override]
    flag_values = flags.FlagValues()
    # ml_collections finds the `--config.` overrides in the argv it is given (else in sys.argv).
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(argv, flag_values)
    assert exit_info.value.code == cli.EXIT_BAD_INPUT
    assert capsys.readouterr().err == f"finetune.py: {message}\n"


def test_a_known_override_parses():
    argv = ["train.py", f"--config={REPO}/configs/tiny.py", "--config.optimizer.peak_lr=5e-4"]
    flag_values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                             sys_argv=argv)
    assert cli.parse_flags(argv, flag_values) == ["train.py"]
    assert config.value.optimizer.peak_lr == 5e-4


def test_quiet_libraries_drops_orbax_info_but_not_its_warnings():
    quiet = cli.QuietLibraries()

    def record(path, level):
        return logging.LogRecord("absl", level, path, 1, "saved", None, None)

    assert not quiet.filter(record("/site-packages/orbax/checkpoint/manager.py", logging.INFO))
    assert quiet.filter(record("/site-packages/orbax/checkpoint/manager.py", logging.WARNING))
    assert not quiet.filter(record("/site-packages/fsspec/caching.py", logging.INFO))
    assert quiet.filter(record("/work/roberta_jax/loop.py", logging.INFO))


def test_quiet_libraries_filters_every_root_handler():
    root, handler = logging.getLogger(), logging.StreamHandler()
    root.addHandler(handler)
    try:
        cli.quiet_libraries()
        assert any(isinstance(f, cli.QuietLibraries) for f in handler.filters)
    finally:
        root.removeHandler(handler)


def test_a_module_run_with_dash_m_is_named_as_the_readme_writes_it(monkeypatch):
    spec = importlib.util.find_spec("roberta_jax.tools.prepare")
    main = types.ModuleType("__main__")
    main.__spec__ = spec
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert cli.program_name(spec.origin) == "python -m roberta_jax.tools.prepare"
    assert cli.program_name("/work/main/train.py") == "train.py"
    main.__spec__ = None  # `python train.py`
    assert cli.program_name("train.py") == "train.py"


@pytest.mark.parametrize("override, message", [
    ("--target=v5p-6", "error: v5p-6: no standard v5p slice of 3 chips"),
    ("--config.data.max_seq_lenght=64", "unknown config key 'data.max_seq_lenght'"),
])
def test_a_tool_s_errors_start_with_its_python_dash_m_command(override, message):
    out = subprocess.run([sys.executable, "-m", "roberta_jax.tools.aot", f"--config={REPO}/configs/tiny.py", override],
                         cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"python -m roberta_jax.tools.aot: {message}")
