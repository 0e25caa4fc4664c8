"""`fastdino curate` end to end on images, its bad inputs as one-line errors, the pipeline without
Faiss, an imported checkpoint, and `pretrain data.train=LIST.txt` reading what curate wrote."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from curate_helpers import fake_embedder, scenario, single_threaded
from PIL import Image
from probe_helpers import tiny_checkpoint

from fastdino_cli.curate import embed
from fastdino_cli.curate import index as index_mod
from fastdino_cli.data.images import read_image_list, resolve_root, scan_images
from fastdino_cli.errors import DataError
from tests.cli_run import run

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)
ROOT = Path(__file__).resolve().parents[1]


def one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit 2, one error line (progress lines may precede it), no traceback."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("fastdino: error:")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in errors[0], err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenario")
    return root, scenario(root)


def scenario_args(root: Path, ckpt: Path, out: Path, *extra) -> list:
    return [
        "curate", "--pool", root / "pool", "--query", root / "query", "--checkpoint", ckpt,
        "--eval", root / "eval", "--out", out, "--shard-size", "4", "--no-figures", *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------


def test_curate_on_images_then_pretrain_reads_the_list(demo_data, ckpt, tmp_path, capsys):
    pool = tmp_path / "pool"
    shutil.copytree(demo_data.train, pool)
    leaked = sorted(Path(demo_data.val).rglob("*.png"))[5]
    shutil.copy(leaked, pool / "leaked_val_copy.png")  # a test image copied into the pool
    original = sorted(pool.rglob("*.png"))[0]
    shutil.copy(original, pool / "zz_exact_copy.png")  # a duplicate inside the pool
    (pool / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "out"
    code, stdout, err = run(
        ["curate", "--pool", pool, "--query", demo_data.val, "--checkpoint", ckpt, "--out", out,
         "--dedup-threshold", "0.99999", "--ref-threshold", "0.99999", "--min-similarity", "-1",
         "--shard-size", "32", "--device", "cpu", "--symlinks"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    n_pool = len(list(pool.rglob("*.*")))
    assert summary["pool"] == {"files": n_pool, "embedded": n_pool - 1, "unreadable": 1}
    assert summary["duplicates"]["within_pool"] >= 1 and summary["duplicates"]["of_query"] >= 1
    listed = (out / "curated.txt").read_text().splitlines()
    assert listed and all(Path(p).is_absolute() and Path(p).is_file() for p in listed)
    assert {Path(p).name for p in listed} <= {p.name for p in pool.rglob("*.png")}
    assert "leaked_val_copy.png" not in {Path(p).name for p in listed}
    dups = [line.split("\t") for line in (out / "duplicates.tsv").read_text().splitlines()[1:]]
    assert [str(pool / "leaked_val_copy.png"), "query", str(leaked)] in [d[:3] for d in dups]
    assert [str(pool / "zz_exact_copy.png"), "pool", str(original)] in [d[:3] for d in dups]
    assert "broken.jpg" in (out / "unreadable.tsv").read_text()
    assert "1 unreadable pool image" in err
    # one table row per query class, counts that add up
    per_class = summary["retrieved"]["per_class"]
    assert [c["class"] for c in per_class] == sorted(demo_data.class_names)
    assert sum(c["retrieved"] for c in per_class) == summary["retrieved"]["total"] == len(listed)
    for name in demo_data.class_names:
        assert name in stdout
    links = sorted((out / "curated").iterdir())
    assert sorted(str(p.resolve()) for p in links) == sorted(str(Path(p).resolve()) for p in listed)
    for png in ("retrievals.png", "nn_similarity.png"):
        with Image.open(out / "figures" / png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    # pretraining reads the list: a listed unreadable file is skipped, an unlisted one never seen
    from test_pretrain import tiny_overrides

    listing = tmp_path / "curated_plus.txt"
    listing.write_text(
        "\n".join(listed[:6]) + "\n# a comment\n\n" + str(pool / "broken.jpg") + "\n"
    )
    run_dir = tmp_path / "run"
    code, stdout, err = run(
        ["pretrain", "--preset", "demo",
         *tiny_overrides(run_dir, listing, extra=["train.max_steps=1"])],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"skipping unreadable image .*broken\.jpg", err), err
    assert (run_dir / "checkpoint.pt").is_file() and "skipped 1 unreadable image" in err


def test_the_scenario_through_the_cli(world, ckpt, tmp_path, capsys, monkeypatch):
    root, vec = world
    monkeypatch.setattr(embed, "embed_images", fake_embedder(vec))
    code, stdout, err = run(scenario_args(root, ckpt, tmp_path / "out", "--json"), capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["duplicates"] | {"threshold": 0, "ref_threshold": 0} == {
        "within_pool": 2, "of_query": 1, "of_eval": 1, "threshold": 0, "ref_threshold": 0,
    }  # fmt: skip
    counts = {c["class"]: c["retrieved"] for c in summary["retrieved"]["per_class"]}
    assert counts["C"] == 0 and counts["A"] > 0 and counts["B"] > 0
    warning = [line for line in err.splitlines() if "'C'" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: query class 'C' retrieved no")
    listed = {Path(p).stem for p in (tmp_path / "out" / "curated.txt").read_text().split()}
    assert listed <= {f"{c}_{i:02d}" for c in "AB" for i in range(8)}
    assert "A_00" in listed  # kept for its two copies


def test_without_faiss_the_exact_fallback_gives_the_same_curation(
    world, ckpt, tmp_path, capsys, monkeypatch
):
    """Exact search (PyTorch) = Faiss flat, to the neighbour; k-means differs in its start, so the
    cluster-based part is compared on its invariants only (stage tests: same partition on
    separable data)."""
    if index_mod.faiss_module() is None:
        pytest.skip("faiss not installed: every other test already runs without it")
    root, vec = world
    monkeypatch.setattr(embed, "embed_images", fake_embedder(vec))
    code, _, err = run(scenario_args(root, ckpt, tmp_path / "faiss", "--method", "sample"), capsys)
    assert code == 0, err
    monkeypatch.setattr(index_mod, "faiss_module", lambda: None)
    monkeypatch.setattr("fastdino_cli.curate.kmeans.faiss_module", lambda: None)
    code, _, err = run(scenario_args(root, ckpt, tmp_path / "torch", "--method", "sample"), capsys)
    assert code == 0, err
    a = json.loads((tmp_path / "faiss" / "summary.json").read_text())
    b = json.loads((tmp_path / "torch" / "summary.json").read_text())
    assert (a["index"], b["index"]) == ("flat", "exact")
    assert a["duplicates"] == b["duplicates"] and a["retrieved"] == b["retrieved"]
    listed = (tmp_path / "faiss" / "curated.txt").read_text()
    assert listed == (tmp_path / "torch" / "curated.txt").read_text()
    code, _, err = run(scenario_args(root, ckpt, tmp_path / "torch", "--method", "both"), capsys)
    assert code == 0, err
    both = json.loads((tmp_path / "torch" / "summary.json").read_text())
    kept = both["kept_after_dedup"]
    assert kept == 36 - 4  # 36 readable pool images, 4 duplicates
    assert both["clusters"]["count"] == round(kept**0.5) and sum(both["clusters"]["sizes"]) == kept
    counts = {c["class"]: c["retrieved"] for c in both["retrieved"]["per_class"]}
    assert counts["C"] == 0 and counts["A"] >= 4 and counts["B"] >= 4
    code, _, err = run(scenario_args(root, ckpt, tmp_path / "x", "--index", "ivfpq"), capsys)
    one_line_error(code, err, "--index ivfpq needs Faiss", "fastdino[curate]")


def test_an_imported_dinov2_checkpoint_is_accepted(demo_data, tmp_path, capsys, monkeypatch):
    import torch
    from test_interop import TINY, hub_state

    from fastdino_cli.interop import import_checkpoint
    from fastdino_cli.model.vit import ARCHS

    monkeypatch.setitem(ARCHS, "vit_tiny", dict(TINY))

    _, state = hub_state(registers=0)
    torch.save(state, tmp_path / "hub.pth")
    imported = import_checkpoint(tmp_path / "hub.pth", tmp_path / "imported.pt", arch="vit_tiny")
    out = tmp_path / "out"
    argv = ["curate", "--pool", demo_data.val, "--query", demo_data.val, "--checkpoint", imported,
            "--out", out, "--no-figures", "--device", "cpu"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    # the pool is the query set itself: every image duplicates a query image
    assert summary["duplicates"]["of_query"] + summary["duplicates"]["within_pool"] == len(
        list(Path(demo_data.val).rglob("*.png"))
    )
    assert summary["retrieved"]["total"] == 0
    assert "warning: every pool image was removed as a duplicate" in err


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors(demo_data, ckpt, tmp_path, capsys):
    def curate(pool=demo_data.val, query=demo_data.val, checkpoint=ckpt, out=None, *extra):
        out = out or tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        argv = ["curate", "--pool", pool, "--query", query, "--checkpoint", checkpoint, "--out",
                out, "--no-figures", *extra]  # fmt: skip
        return run(argv, capsys)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("no images here")
    code, _, err = curate(pool=empty)
    one_line_error(code, err, "no image files", str(empty))
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n/nowhere/b.png\n")
    code, _, err = curate(pool=listing)
    one_line_error(code, err, "2 of the 2 files listed", "a.png", "do not exist")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for i in range(3):
        (garbage / f"g{i}.jpg").write_bytes(b"\xff\xd8\xff nope")
    code, _, err = curate(pool=garbage)
    one_line_error(code, err, "none of the 3 pool images could be read")
    bad_ckpt = tmp_path / "bad.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    code, _, err = curate(checkpoint=bad_ckpt)
    one_line_error(code, err, str(bad_ckpt), "not a readable torch checkpoint")
    code, _, err = curate(checkpoint=tmp_path / "missing.pt")
    one_line_error(code, err, "does not exist")
    code, _, err = curate(demo_data.val, demo_data.val, ckpt, None, "--device", "tpu:0")
    one_line_error(code, err, "--device")
    if not __import__("torch").cuda.is_available():
        code, _, err = curate(demo_data.val, demo_data.val, ckpt, None, "--device", "cuda")
        one_line_error(code, err, "no CUDA GPU")
    code, _, err = curate(demo_data.val, demo_data.val, ckpt, None, "--method", "random")
    one_line_error(code, err, "--method 'random'")
    code, _, err = curate(demo_data.val, demo_data.val, ckpt, None, "--dedup-threshold", "1.5")
    one_line_error(code, err, "--dedup-threshold", "between -1 and 1")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    code, _, err = curate(demo_data.val, demo_data.val, ckpt, foreign)
    one_line_error(code, err, "not empty", str(foreign))
    assert (foreign / "thesis.tex").read_text() == "precious" and len(list(foreign.iterdir())) == 1
    code, _, err = curate(query=tmp_path / "no-query")
    one_line_error(code, err, "--query", "not a folder")


def test_command_module_imports_neither_torch_nor_faiss():
    code = (
        "import sys; import fastdino_cli.commands.curate; "
        "print(sorted(m for m in ('torch', 'faiss', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------
# image lists (data/images.py): what `pretrain data.train=LIST.txt` reads
# ------------------------------------------------------------------------------------------


def test_image_lists_resolve_relative_paths_and_skip_comments(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / name)
    elsewhere = tmp_path / "other" / "c.png"
    elsewhere.parent.mkdir()
    Image.new("RGB", (4, 4)).save(elsewhere)
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text(f"# curated\n\n  ../imgs/b.png  \n{elsewhere}\n../imgs/a.png\n")
    expected = [listing.parent / "../imgs/b.png", elsewhere, listing.parent / "../imgs/a.png"]
    assert read_image_list(listing) == expected  # the list's order, relative to its folder
    assert scan_images(listing) == expected
    assert resolve_root(str(listing)) == listing
    with pytest.raises(DataError, match="not a folder"):
        resolve_root(str(elsewhere))
    listing.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="names no images"):
        read_image_list(listing)
    listing.write_text("\n".join(f"missing_{i}.png" for i in range(5)) + "\n../imgs/a.png\n")
    with pytest.raises(DataError, match=r"5 of the 6 files .* \(.*missing_0.png, .*, \.\.\.\)"):
        scan_images(listing)
