"""Guards of the two XLA SPMD workarounds in the train step (reproducers in tests/xla_repro.py).

Each reproducer computes a gradient on a data=2 x fsdp=2 x tensor=2 CPU mesh in the naive form and in the
workaround's, against one device. The workaround must agree; the naive form is asserted still wrong, so the
day a jax release fixes the partitioner this test fails and says which workaround can go. Tried: jax/jaxlib
0.10.2 (the newest on the package index) and 0.9.2; both miscompile both naive forms.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKAROUNDS = {
    "label_gather": "roberta_jax/train/objectives.py xent_sums (one-hot targets instead of a label gather)",
    "loop_free_step": "roberta_jax/train/steps.py _accumulate (a one-iteration lax.scan without accumulation)",
}


@pytest.mark.parametrize("name", sorted(WORKAROUNDS))
def test_the_workaround_is_exact_and_still_needed(name):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "tests.xla_repro", name], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert errors["workaround"] < 1e-5, errors
    assert errors["naive"] > 1e-2, (f"jax {errors['jax']} computes the naive form right ({errors}): the workaround "
                                    f"in {WORKAROUNDS[name]} may go (check tests/test_train.py's mesh test without it)")
