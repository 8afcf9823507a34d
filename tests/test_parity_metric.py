"""The shared parity metric (tests/parity.py): scale-aware, row-aware, strict about shapes, and its plugin's report."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import parity
import pytest
import torch
from parity import EPS32, STAGES, Stage, assert_caught, check, markdown_table, parity_error, power_of_log

REPO_ROOT = Path(__file__).resolve().parents[1]
PLAIN = Stage(n=1, why="test")


@pytest.fixture
def own_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """These self-tests record into their own dicts, so a session's --parity-metrics holds only real checks."""
    monkeypatch.setattr(parity, "MEASURED", {})
    monkeypatch.setattr(parity, "MUTANTS", {})


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_values_near_zero_do_not_blow_up_the_error() -> None:
    """One ulp of the tensor's scale on an element that is ~0 is one ulp, not 1e-7 / 1e-9."""
    ref = _randn(1000)
    ref[::7] = 1e-9
    ours = ref.clone()
    ours[::7] += EPS32
    rms = float(ref.double().pow(2).mean().sqrt())
    assert parity_error(ours, ref, PLAIN) == pytest.approx(EPS32 / rms, rel=1e-3)
    # the elementwise relative error the metric replaces: ~100 on the same data
    assert float(((ours - ref).abs() / ref.abs().clamp(min=1e-3)).max()) > 1e-4


def test_error_is_measured_against_the_rms_or_the_max() -> None:
    ref = torch.tensor([3.0, -4.0, 0.0, 0.0])  # rms 2.5, max |ref| 4
    ours = ref + torch.tensor([0.0, 0.0, 0.01, 0.0])
    assert parity_error(ours, ref, PLAIN) == pytest.approx(0.01 / 2.5, rel=1e-6)
    assert parity_error(ours, ref, Stage(n=1, why="", scale="max")) == pytest.approx(0.01 / 4, rel=1e-6)


def test_rows_are_judged_at_their_own_scale_down_to_the_floor() -> None:
    loud, quiet = _randn(1, 64, seed=1) * 100, _randn(1, 64, seed=2) * 0.1
    ref = torch.cat([loud, quiet])
    ours = ref.clone()
    ours[1, 0] += 1e-3  # 1 % of the quiet row's scale, 1e-5 of the tensor's
    whole = parity_error(ours, ref, PLAIN)
    per_row = parity_error(ours, ref, Stage(n=1, why="", rows=(0,)))
    assert whole < 2e-5 and per_row == pytest.approx(1e-3 / float(quiet.double().pow(2).mean().sqrt()), rel=1e-4)
    silent = torch.cat([loud, torch.zeros(1, 64)])  # a silent row is judged against 2**-10 of the tensor
    bumped = silent.clone()
    bumped[1, 0] = 1e-3
    rms = float(silent.double().pow(2).mean().sqrt())
    assert parity_error(bumped, silent, Stage(n=1, why="", rows=(0,))) == pytest.approx(1e-3 / (rms * 2**-10))


def test_shapes_must_match_and_a_zero_reference_is_refused() -> None:
    with pytest.raises(AssertionError, match="shapes differ"):
        parity_error(torch.zeros(3), torch.zeros(1, 3), PLAIN)
    with pytest.raises(AssertionError, match="all zeros"):
        parity_error(torch.zeros(3), torch.zeros(3), PLAIN)


def test_power_of_log_undoes_the_s3_tokenizer_scaling() -> None:
    power = torch.tensor([1e-8, 1e-3, 2.5, 40.0], dtype=torch.float64)
    log_mel = (power.log10() + 4) / 4
    torch.testing.assert_close(power_of_log(log_mel, base=10.0, scale=4.0, offset=4.0), power, rtol=1e-12, atol=0)
    torch.testing.assert_close(power_of_log(power.log()), power, rtol=1e-12, atol=0)


@pytest.mark.usefixtures("own_records")
def test_check_passes_under_the_bound_and_assert_caught_above_it() -> None:
    ref = _randn(4, 256, seed=3)
    stage = STAGES["t3.logits"]
    rms = float(ref.double().pow(2).mean().sqrt())
    near = ref + 0.5 * stage.bound * rms * torch.sign(_randn(4, 256, seed=4))
    far = ref + 2.0 * stage.bound * rms * torch.sign(_randn(4, 256, seed=4))
    assert check("t3.logits", near, ref, case="metric self-test") <= stage.bound
    with pytest.raises(AssertionError, match="> bound"):
        check("t3.logits", far, ref, case="metric self-test")
    assert assert_caught("t3.logits", far, ref, mutant="metric self-test") > stage.bound
    with pytest.raises(AssertionError, match="passes the t3.logits check"):
        assert_caught("t3.logits", near, ref, mutant="metric self-test")


def test_bounds_follow_the_one_formula() -> None:
    """K = 4 standard deviations of a random walk over n/8 float32 roundings, times the stage's documented gain."""
    for name, stage in STAGES.items():
        assert stage.why and stage.n >= 1 and stage.gain > 0, name
        assert stage.bound == pytest.approx(4.0 * EPS32 * math.sqrt(max(stage.n / 8, 1)) * stage.gain), name
        assert EPS32 < stage.bound < 1e-2, name  # no check is looser than 1 % of its tensor's scale


def test_readme_table_lists_every_stage_with_its_bound() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name, stage in STAGES.items():
        assert re.search(rf"\| `{re.escape(name)}` \| {stage.bound / EPS32:.0f} \|", readme), name
    table = markdown_table([{"torch_threads": 1, "stages": {}}])
    assert table.count("\n") == len(STAGES) + 1


def test_plugin_sets_threads_and_writes_the_metrics(tmp_path: Path) -> None:
    """`CHATTERBOX_TEST_TORCH_THREADS` and `--parity-metrics`, through a real pytest run of one check."""
    (tmp_path / "test_one.py").write_text(
        "import torch\n"
        "from parity import EPS32, check\n\n"
        "def test_one():\n"
        "    assert torch.get_num_threads() == 1\n"
        "    ref = torch.full((4,), 0.5)\n"
        "    check('ve.embedding', ref + torch.tensor([EPS32, 0, 0, 0]), ref, case='recorded')\n"
    )
    out = tmp_path / "metrics.json"
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "CHATTERBOX_TEST_TORCH_THREADS": "1", "PYTHONPATH": python_path}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "parity", "-p", "no:cacheprovider", "test_one.py",
           "--parity-metrics", str(out)]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    document = json.loads(out.read_text())
    assert document["torch_threads"] == 1
    assert document["stages"]["ve.embedding"]["cases"] == {"recorded": pytest.approx(EPS32 / 0.5)}
