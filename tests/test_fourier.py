"""Fourier heatmap: basis properties, half-plane enumeration, toy filters, seed, resumption."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdino_cli.errors import ConfigError
from fastdino_cli.eval.fourier.basis import (
    compute_fourier_heatmap,
    default_eps,
    fourier_basis,
    half_plane_frequencies,
    map_axis,
    mirror_to_plane,
    perturbation_signs,
    radial_profile,
    signed_frequency,
)

# ---------------------------------------------------------------- basis and enumeration


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 15, 16])
def test_half_plane_count_and_one_member_per_pair(n):
    freqs = half_plane_frequencies(n)
    expected = n * n // 2 + 2 if n % 2 == 0 else (n * n + 1) // 2
    assert len(freqs) == expected
    # every full-plane index is covered by exactly one pair member (itself or its conjugate)
    cover = np.zeros((n, n), dtype=int)
    for u, w in freqs:
        cover[u, w] += 1
        if ((-u) % n, (-w) % n) != (u, w):
            cover[(-u) % n, (-w) % n] += 1
    assert (cover == 1).all()
    assert (freqs[:, 1] <= n // 2).all()


def test_paper_counts_at_224():
    assert len(half_plane_frequencies(224)) == 25_090
    assert len(half_plane_frequencies(224, window=63)) == (63 * 63 + 1) // 2 == 1985
    assert len(half_plane_frequencies(32)) == 514


@pytest.mark.parametrize("n", [8, 9])
def test_basis_real_unit_norm_single_conjugate_pair_orthogonal(n):
    freqs = half_plane_frequencies(n)
    basis = fourier_basis(freqs, n, dtype=torch.float64)
    assert basis.shape == (len(freqs), n, n) and not basis.is_complex()
    flat = basis.flatten(1)
    gram = flat @ flat.T  # unit norm on the diagonal, distinct bases orthogonal
    torch.testing.assert_close(gram, torch.eye(len(freqs), dtype=torch.float64), atol=1e-10, rtol=0)
    for (u, w), b in zip(freqs, basis, strict=True):
        spectrum = np.abs(np.fft.fft2(b.numpy()))
        support = {tuple(int(i) for i in p) for p in np.argwhere(spectrum > 1e-9)}
        assert support == {(int(u), int(w)), (int((-u) % n), int((-w) % n))}


def test_basis_orientation_rows_are_vertical_frequency():
    b = fourier_basis(np.array([[1, 0]]), 8, dtype=torch.float64)[0]
    assert torch.allclose(b, b[:, :1].expand(8, 8))  # constant along x: varies with y only
    assert b[0, 0] > 0 and b[4, 0] < 0


def test_window_enumeration_and_validation():
    freqs = half_plane_frequencies(16, window=5)
    assert len(freqs) == 13
    assert (np.abs(signed_frequency(freqs, 16)) <= 2).all()
    for bad in (0, 4, 17):
        with pytest.raises(ConfigError, match="--window"):
            half_plane_frequencies(16, window=bad)


@pytest.mark.parametrize("n", [8, 9])
def test_mirror_is_point_symmetric_with_dc_at_centre(n):
    freqs = half_plane_frequencies(n)
    values = np.arange(len(freqs), dtype=float)
    plane = mirror_to_plane(values, freqs, n)
    assert not np.isnan(plane).any()
    c = n // 2
    assert plane[c, c] == values[0]  # (0, 0) is enumerated first
    sym = plane if n % 2 else plane[1:, 1:]  # drop the unpaired Nyquist row/column
    np.testing.assert_array_equal(sym, sym[::-1, ::-1])
    assert np.array_equal(map_axis(n), np.fft.fftshift(np.fft.fftfreq(n) * n))
    win = mirror_to_plane(values, freqs, n, window=3)
    np.testing.assert_array_equal(win, plane[c - 1 : c + 2, c - 1 : c + 2])


def test_signs_are_keyed_by_seed_and_frequency():
    a = perturbation_signs(0, (3, 1), 50)
    assert a.shape == (50, 3) and set(np.unique(a)) == {-1.0, 1.0}
    np.testing.assert_array_equal(a, perturbation_signs(0, (3, 1), 50))
    assert not np.array_equal(a, perturbation_signs(1, (3, 1), 50))
    assert not np.array_equal(a, perturbation_signs(0, (1, 3), 50))


def test_default_eps_keeps_the_paper_amplitude():
    assert default_eps(224) == pytest.approx(15.7)
    # peak of a non-DC basis times eps: ~0.099 in [0, 1] units at every size
    for n in (16, 64, 224):
        peak = fourier_basis(np.array([[1, 2]]), n).abs().max().item() * default_eps(n)
        assert peak == pytest.approx(np.sqrt(2) / 224 * 15.7, rel=1e-3)


# ---------------------------------------------------------------- toy classifiers


def band_energy_classifier(n: int, keep):
    """Fixed FFT filter (mask ``keep(radius)``) then a threshold on the filtered energy.

    Class 0 when the band-passed image (mean removed) is nearly empty, class 1 otherwise.
    """
    fy = signed_frequency(np.arange(n), n)
    radius = np.hypot(fy[:, None], fy[None, :])
    mask = torch.as_tensor(keep(radius) & (radius > 0), dtype=torch.float64)

    def classify(x):
        spec = torch.fft.fft2(x.double() - x.double().mean(dim=(-2, -1), keepdim=True))
        energy = ((spec.abs() * mask) ** 2).sum(dim=(1, 2, 3)) / n**2
        return torch.stack([torch.full_like(energy, 0.1), energy], dim=1)

    return classify


def gray_images(n: int, levels=(0.35, 0.5, 0.65)):
    imgs = torch.stack([torch.full((3, n, n), v) for v in levels]).double()
    return imgs, torch.zeros(len(levels), dtype=torch.int64)


@pytest.mark.parametrize("window", [None, 9])
def test_low_pass_toy_errs_only_at_low_frequencies(window):
    n, cutoff = 16, 3.0
    images, labels = gray_images(n)
    res = compute_fourier_heatmap(
        band_energy_classifier(n, lambda r: r <= cutoff), images, labels, window=window
    )
    fy, fx = np.meshgrid(res.axis, res.axis, indexing="ij")
    radius = np.hypot(fy, fx)
    expected = ((radius <= cutoff) & (radius > 0)).astype(float)
    assert res.clean_error == 0.0
    np.testing.assert_array_equal(res.error, expected)
    np.testing.assert_array_equal(res.error_minus_clean, expected)
    radii, prof = radial_profile(res)
    assert prof[0] == 0 and (prof[(radii >= 1) & (radii <= 2)] == 1).all()
    assert 0 < prof[radii == 3][0] < 1 and (prof[radii >= 4] == 0).all()  # ring 3 straddles


def test_high_pass_toy_errs_only_at_high_frequencies():
    n, cutoff = 16, 5.0
    images, labels = gray_images(n)
    res = compute_fourier_heatmap(
        band_energy_classifier(n, lambda r: r > cutoff), images, labels, batch_size=7
    )
    fy, fx = np.meshgrid(res.axis, res.axis, indexing="ij")
    np.testing.assert_array_equal(res.error, (np.hypot(fy, fx) > cutoff).astype(float))


def test_directional_toy_puts_vertical_frequencies_on_the_vertical_axis():
    n = 12
    fy = signed_frequency(np.arange(n), n)
    sees_vertical = torch.as_tensor((fy[:, None] != 0) & (fy[None, :] == 0), dtype=torch.float64)

    def classify(x):
        energy = ((torch.fft.fft2(x.double()).abs() * sees_vertical) ** 2).sum(dim=(1, 2, 3))
        return torch.stack([torch.full_like(energy, 0.1), energy / n**2], dim=1)

    images, labels = gray_images(n)
    res = compute_fourier_heatmap(classify, images, labels)
    c = n // 2
    expected = np.zeros((n, n))
    expected[:, c] = 1.0  # column fx = 0, every fy != 0
    expected[c, c] = 0.0
    np.testing.assert_array_equal(res.error, expected)


# ---------------------------------------------------------------- seed, batching, resume


def linear_problem(n=8, m=12, classes=3):
    """A fixed random linear classifier on random images: sign-sensitive, errors in between."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(m, 3, n, n, generator=g, dtype=torch.float64) * 0.6 + 0.2
    weight = torch.randn(classes, 3 * n * n, generator=g, dtype=torch.float64)
    labels = (images.flatten(1) @ weight.T).argmax(1)
    labels[: m // 4] = (labels[: m // 4] + 1) % classes  # some clean errors too

    def classify(x):
        return x.flatten(1) @ weight.T

    return classify, images, labels


def test_determinism_under_seed_and_batch_size():
    classify, images, labels = linear_problem()
    a = compute_fourier_heatmap(classify, images, labels, eps=3.0, seed=1, batch_size=64)
    b = compute_fourier_heatmap(classify, images, labels, eps=3.0, seed=1, batch_size=5)
    c = compute_fourier_heatmap(classify, images, labels, eps=3.0, seed=2, batch_size=64)
    np.testing.assert_array_equal(a.error, b.error)
    assert a.clean_error == pytest.approx(0.25)
    assert 0 < np.nanmean(a.error) < 1
    assert not np.array_equal(a.error, c.error)
    # a window evaluates the same frequencies with the same signs as the full plane
    w = compute_fourier_heatmap(classify, images, labels, eps=3.0, seed=1, window=5)
    np.testing.assert_array_equal(w.error, a.error[2:7, 2:7])


class Interrupting:
    """Wraps a classifier; raises KeyboardInterrupt on call ``stop_at`` (a killed run)."""

    def __init__(self, classify, stop_at=None):
        self.classify, self.stop_at, self.calls = classify, stop_at, 0

    def __call__(self, x):
        self.calls += 1
        if self.stop_at is not None and self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.classify(x)


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    classify, images, labels = linear_problem()
    kw = dict(eps=3.0, seed=3, batch_size=24, identity={"ckpt": "abc"})
    full = compute_fourier_heatmap(classify, images, labels, **kw)
    n_chunks = -(-len(full.freqs) // 2)  # 24 // 12 images = 2 bases per forward pass

    state = tmp_path / "state.npz"
    first = Interrupting(classify, stop_at=6)  # clean pass + 4 chunks, dies in the 5th
    with pytest.raises(KeyboardInterrupt):
        compute_fourier_heatmap(first, images, labels, state_path=state, **kw)
    with np.load(state) as z:
        assert z["done"].sum() == 8 and int(z["clean"][0]) == 3

    second = Interrupting(classify)
    resumed = compute_fourier_heatmap(second, images, labels, state_path=state, **kw)
    assert second.calls == n_chunks - 4  # neither the clean pass nor done chunks run again
    np.testing.assert_array_equal(resumed.error, full.error)
    np.testing.assert_array_equal(resumed.error_top5, full.error_top5)
    assert resumed.clean_error == full.clean_error
    assert resumed.clean_error_top5 == full.clean_error_top5

    # a finished state answers without any forward pass; a different key starts afresh
    third = Interrupting(classify)
    compute_fourier_heatmap(third, images, labels, state_path=state, **kw)
    assert third.calls == 0
    fourth = Interrupting(classify)
    other = dict(kw, identity={"ckpt": "other"})
    compute_fourier_heatmap(fourth, images, labels, state_path=state, **other)
    assert fourth.calls == n_chunks + 1


def test_top5_map_equals_a_plain_loop_over_bases_images_and_channels():
    """Top-5 (and top-1) error per frequency against a direct numpy computation: one image at a
    time, the wave written out as cos(2 pi (u y + w x) / N) / ||.||, the signs of the
    documented generator; no batching, no mirroring."""
    n, eps, seed = 6, 4.0, 5
    classify, images, labels = linear_problem(n=n, m=10, classes=9)
    res = compute_fourier_heatmap(classify, images, labels, eps=eps, seed=seed, batch_size=7)
    x_np, y_np = images.numpy(), labels.numpy()
    assert res.error_top5.shape == res.error.shape == (n, n)

    def top1_top5_wrong(x, y):
        logits = classify(torch.from_numpy(x[None])).numpy()[0]
        order = np.argsort(-logits, kind="stable")
        return int(np.argmax(logits) != y), int(y not in order[:5])

    yy, xx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for u, w in half_plane_frequencies(n):
        wave = np.cos(2 * np.pi * (u * yy + w * xx) / n)
        wave /= np.linalg.norm(wave)
        signs = np.random.default_rng([seed, int(u), int(w)]).integers(0, 2, (len(x_np), 3)) * 2 - 1
        wrong = np.zeros(2)
        for x, y, s in zip(x_np, y_np, signs, strict=True):
            wrong += top1_top5_wrong(np.clip(x + eps * s[:, None, None] * wave, 0, 1), y)
        row, col = (u + n // 2) % n, (w + n // 2) % n  # DC at the centre
        assert res.error[row, col] == pytest.approx(wrong[0] / len(x_np))
        assert res.error_top5[row, col] == pytest.approx(wrong[1] / len(x_np))
    clean = [top1_top5_wrong(x, y) for x, y in zip(x_np, y_np, strict=True)]
    assert res.clean_error_top5 == pytest.approx(np.mean([c[1] for c in clean]))
    assert res.clean_error_top5 <= res.clean_error
    assert np.all(res.error_top5 <= res.error) and res.error_top5.max() > 0


def test_periodic_saves_survive_a_hard_kill(tmp_path):
    """With save_interval_s=0 the state on disk is current before the process could die."""
    classify, images, labels = linear_problem()
    state = tmp_path / "s.npz"
    seen = []

    def spy(x):
        if state.exists():
            with np.load(state) as z:
                seen.append(int(z["done"].sum()))
        return classify(x)

    compute_fourier_heatmap(
        spy, images, labels, eps=3.0, batch_size=12, state_path=state, save_interval_s=0
    )
    # first chunk's call: nothing saved yet; afterwards one more frequency before every call
    assert seen == list(range(1, len(half_plane_frequencies(8))))


# ---------------------------------------------------------------- figures, CLI end to end


def test_figures_share_one_colour_scale(tmp_path):
    from PIL import Image

    from fastdino_cli.figures.fourier import (
        plot_heatmap,
        plot_radial,
        plot_side_by_side,
        shared_range,
    )

    images, labels = gray_images(8)
    low = compute_fourier_heatmap(band_energy_classifier(8, lambda r: r <= 2), images, labels)
    high = compute_fourier_heatmap(band_energy_classifier(8, lambda r: r > 2), images, labels)
    assert shared_range([low.error, high.error * 0.5]) == (0.0, 1.0)
    for path in (
        plot_heatmap(low, "low", tmp_path / "a.png"),
        plot_side_by_side([low, high], ["low", "high"], tmp_path / "b.png"),
        plot_radial([low, high], ["low", "high"], tmp_path / "c.png"),
    ):
        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def test_top5_maps_get_their_own_row_beside_top1(tmp_path):
    """Heatmap and side-by-side figures draw a top-5 row when the results have the map (each row
    on its own shared scale); maps read back from older runs (no top-5) keep one row."""
    import dataclasses

    from PIL import Image

    from fastdino_cli.figures.fourier import plot_heatmap, plot_side_by_side

    classify, images, labels = linear_problem(classes=9)
    res = compute_fourier_heatmap(classify, images, labels, eps=3.0)
    old = dataclasses.replace(res, error_top5=None, clean_error_top5=None)
    heights = {}
    for name, r in (("new", res), ("old", old)):
        for kind, path in (
            ("heatmap", plot_heatmap(r, name, tmp_path / f"{name}_h.png")),
            ("side", plot_side_by_side([r, r], ["a", "b"], tmp_path / f"{name}_s.png")),
        ):
            with Image.open(path) as im:
                heights[name, kind] = im.size[1]
    for kind in ("heatmap", "side"):
        assert heights["new", kind] == pytest.approx(2 * heights["old", kind], rel=0.05)


@pytest.fixture(scope="module")
def probed_checkpoint(tmp_path_factory, demo_data):
    """A random-init tiny ViT (patch 8, 32 px) with a linear probe head stored by run_probe."""
    from fastdino_cli.eval.probe.run import run_probe
    from tests.probe_helpers import tiny_checkpoint

    tmp = tmp_path_factory.mktemp("fourier_ckpt")
    path = tiny_checkpoint(tmp / "run" / "final.pt", depth=2)
    run_probe(
        [path], demo_data.train, demo_data.val, ks=(10,), epochs=3, batch_size=32,
        n_last_blocks=(1,), lrs=(0.01, 0.1), use_cache=False, device="cpu",
    )  # fmt: skip
    return path


def run_cli(argv, capsys):
    from fastdino_cli.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_cli_end_to_end_writes_arrays_metadata_and_figures(
    probed_checkpoint, demo_data, tmp_path, capsys
):
    import json

    from PIL import Image

    from fastdino_cli.data.labelled import scan_labelled_folder
    from fastdino_cli.eval.classifier import load_probe_classifier

    out = tmp_path / "out"
    argv = ["fourier-heatmap", str(probed_checkpoint), "--data", str(demo_data.val)]
    argv += ["--out", str(out), "--size", "16", "--images-per-class", "1", "--seed", "4"]
    argv += ["--radial", "--batch-size", "64", "--device", "cpu"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "final: clean error" in stdout and "side_by_side.png" in stdout
    folder = out / "final"
    error = np.load(folder / "error.npy")
    assert error.shape == (16, 16) and ((error >= 0) & (error <= 1)).all()
    meta = json.loads((folder / "meta.json").read_text())
    np.testing.assert_allclose(
        np.load(folder / "error_minus_clean.npy"), error - meta["clean_error"]
    )
    assert meta["eps"] == pytest.approx(default_eps(16)) and meta["size"] == 16
    assert meta["n_images"] == 10 and meta["seed"] == 4 and meta["window"] is None
    assert meta["n_bases"] == 16 * 16 // 2 + 2 and len(meta["checkpoint_sha256"]) == 64
    assert meta["probe"]["n_classes"] == 10 and meta["probe"]["recipe"]["crop_size"] == 32
    for png in (folder / "heatmap.png", out / "side_by_side.png", out / "radial.png"):
        with Image.open(png) as im:
            assert im.format == "PNG"

    # the same numbers as computing the map directly with the stored classifier
    clf = load_probe_classifier(probed_checkpoint)
    val = scan_labelled_folder(demo_data.val)
    from fastdino_cli.eval.features import eval_transform

    recipe = type(clf.recipe)(**{**clf.recipe.to_dict(), "crop_size": 16, "resize_size": 18})
    tf = eval_transform(recipe, normalize=False)
    by_name = {rel.split("/")[0]: rel for rel in meta["images"]}
    idx = [val.paths.index(val.root / by_name[c]) for c in val.class_names]
    x = torch.stack([tf(val.load_rgb(i)) for i in idx])
    y = torch.tensor([val.labels[i] for i in idx])
    direct = compute_fourier_heatmap(clf.forward_pixels, x, y, seed=4)
    np.testing.assert_array_equal(direct.error, error)
    assert direct.clean_error == meta["clean_error"]

    # a second run with the same arguments reuses the finished state file
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(folder / "error.npy"), error)


def test_the_run_writes_numbers_and_the_figures_are_drawn_from_them(
    probed_checkpoint, demo_data, tmp_path
):
    """Compute never draws: the run leaves arrays, meta and radial.csv; the figures come from
    the result, and the report's reader gives back the same map."""
    import csv

    from fastdino_cli.eval.fourier.result import load_heatmap
    from fastdino_cli.eval.fourier.run import run_fourier_heatmaps
    from fastdino_cli.figures.fourier import draw_fourier_run

    run = run_fourier_heatmaps(
        [probed_checkpoint], demo_data.val, tmp_path / "f", size=16, window=5,
        images_per_class=1, radial=True, device="cpu", progress=False,
    )  # fmt: skip
    assert not list(run.out.rglob("*.png")) and run.labels == ["final"]
    result = run.results[0]
    back = load_heatmap(run.out / "final")
    np.testing.assert_array_equal(back.error, result.error)
    assert (back.clean_error, back.size, back.window) == (result.clean_error, 16, 5)
    with open(run.out / "radial.csv") as f:
        rows = list(csv.DictReader(f))
    radii, means = radial_profile(result)
    assert [int(r["radius"]) for r in rows] == radii.tolist()
    np.testing.assert_allclose([float(r["error"]) for r in rows], means)
    np.testing.assert_allclose(
        [float(r["error_top5"]) for r in rows], radial_profile(result, top5=True)[1]
    )
    # top-5 beside top-1: arrays, meta, summary, and read back by the report's reader
    import json

    folder = run.out / "final"
    np.testing.assert_array_equal(np.load(folder / "error_top5.npy"), result.error_top5)
    np.testing.assert_allclose(
        np.load(folder / "error_top5_minus_clean.npy"),
        result.error_top5 - result.clean_error_top5,
    )
    np.testing.assert_array_equal(back.error_top5, result.error_top5)
    assert back.clean_error_top5 == result.clean_error_top5
    assert np.nanmax(result.error_top5 - result.error) <= 0  # top-5 errs no more than top-1
    meta = json.loads((folder / "meta.json").read_text())
    summary = json.loads((run.out / "summary.json").read_text())["checkpoints"][0]
    for d in (meta, summary):
        assert d["clean_error_top5"] == result.clean_error_top5
        assert d["mean_error_top5"] == pytest.approx(float(np.nanmean(result.error_top5)))
    assert meta["precision"] == {"autocast": None, "storage": "float32"}  # probed on CPU
    drawn = draw_fourier_run(run)
    assert [p.name for p in drawn] == ["heatmap.png", "side_by_side.png", "radial.png"]
    assert all(p.is_file() for p in drawn)


def test_cli_user_errors_are_one_line(probed_checkpoint, demo_data, tmp_path, capsys):
    from tests.probe_helpers import tiny_checkpoint

    bare = tiny_checkpoint(tmp_path / "bare.pt", depth=1)
    base = ["--data", str(demo_data.val), "--out", str(tmp_path / "o")]
    code, _, err = run_cli(["fourier-heatmap", str(bare), *base], capsys)
    assert code == 2 and "has no probe head" in err and "fastdino probe" in err
    assert err.strip().count("\n") == 0
    code, _, err = run_cli(
        ["fourier-heatmap", str(probed_checkpoint), *base, "--window", "8"], capsys
    )
    assert code == 2 and "--window 8" in err
    code, _, err = run_cli(
        ["fourier-heatmap", str(probed_checkpoint), *base, "--size", "20"], capsys
    )
    assert code == 2 and "patch size 8" in err
    code, _, err = run_cli(
        ["fourier-heatmap", str(probed_checkpoint), "--data", str(tmp_path / "nope"), "--out", "o"],
        capsys,
    )
    assert code == 2 and "nope" in err and "does not exist" in err
