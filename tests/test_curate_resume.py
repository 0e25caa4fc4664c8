"""A curation killed in any stage resumes where it stopped and ends exactly like an uninterrupted
one. The kill is injected deterministically: a write inside the stage raises ``Killed`` (a
``BaseException``, as uncatchable for the code as SIGKILL) after leaving a half-written temporary
file behind, as a killed writer does."""

from __future__ import annotations

from pathlib import Path

import pytest
from curate_helpers import fake_embedder, scenario, single_threaded
from probe_helpers import tiny_checkpoint

from fastdino_cli.curate import embed, store
from fastdino_cli.curate.run import curate
from fastdino_cli.curate.settings import CurateSettings
from fastdino_cli.errors import ConfigError

pytestmark = pytest.mark.usefixtures(single_threaded.__name__)
SETTINGS = CurateSettings(shard_size=4, figures=False, method="both")


class Killed(BaseException):
    pass


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    vec = scenario(root)
    ckpt = tiny_checkpoint(root / "tiny.pt")
    return root, vec, ckpt


@pytest.fixture(scope="module")
def reference(world):
    """The uninterrupted run everything is compared with."""
    root, vec, ckpt = world
    mp = pytest.MonkeyPatch()
    mp.setattr(embed, "embed_images", fake_embedder(vec))
    try:
        return run(root, ckpt, root / "reference")
    finally:
        mp.undo()


def run(root: Path, ckpt: Path, out: Path, settings: CurateSettings = SETTINGS):
    return curate(
        root / "pool", root / "query", ckpt, out, eval_dirs=[root / "eval"], settings=settings
    )


def same_result(a, b) -> None:
    assert a.curated_list.read_text() == b.curated_list.read_text()
    for key in ("pool", "query", "eval", "duplicates", "kept_after_dedup", "retrieved", "clusters"):
        assert a.summary[key] == b.summary[key], key
    assert (a.out / "duplicates.tsv").read_text().replace(str(a.out), "") == (
        b.out / "duplicates.tsv"
    ).read_text().replace(str(b.out), "")


def kill_on(monkeypatch, name: str, parent: str, writer: str = "write_npz") -> None:
    """Make ``store.<writer>`` leave a half-written temp file and raise ``Killed`` for ``name``."""
    real = getattr(store, writer)

    def dying(path, *args, **kwargs):
        path = Path(path)
        if path.name == name and path.parent.name == parent:
            (path.parent / f".{path.name}.half.tmp").write_bytes(b"\x93NUMPY half")
            raise Killed(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(store, writer, dying)


def spy_writes(monkeypatch) -> list[str]:
    """Every file the store writes from now on, as ``folder/name`` (all stage outputs go through
    these four writers)."""
    written: list[str] = []
    for name in ("write_npz", "write_npy", "write_json", "write_lines"):
        real = getattr(store, name)

        def spy(path, *args, _real=real, **kwargs):
            written.append(f"{Path(path).parent.name}/{Path(path).name}")
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(store, name, spy)
    return written


def in_folder(written: list[str], folder: str) -> list[str]:
    return [w.split("/", 1)[1] for w in written if w.split("/", 1)[0] == folder]


def no_temp_files(out: Path) -> bool:
    return not list(out.rglob(".*.tmp"))


def test_kill_in_embed_redoes_only_the_unfinished_shard(world, reference, monkeypatch, tmp_path):
    root, vec, ckpt = world
    calls: list[list[str]] = []
    monkeypatch.setattr(embed, "embed_images", fake_embedder(vec, calls))
    kill_on(monkeypatch, "shard_00002.json", "pool", writer="write_json")  # .npy written, no marker
    with pytest.raises(Killed):
        run(root, ckpt, tmp_path)
    assert len(calls) == 3 and (tmp_path / "embed" / "pool" / "shard_00002.npy").is_file()
    monkeypatch.undo()
    calls.clear()
    monkeypatch.setattr(embed, "embed_images", fake_embedder(vec, calls))
    written = spy_writes(monkeypatch)
    result = run(root, ckpt, tmp_path)
    pool_files = sorted(p.stem for p in (root / "pool").iterdir())
    assert calls[0] == pool_files[8:12]  # resumed at shard 2: shards 0 and 1 were not redone
    assert len(calls) == 10 - 2 + 3 + 1  # the rest of the pool, then query (3), eval (1)
    shards = [w for w in in_folder(written, "pool") if w.startswith("shard_")]
    assert shards[:2] == ["shard_00002.npy", "shard_00002.json"]  # the half-done shard redone
    assert not any(w.startswith(("shard_00000", "shard_00001")) for w in shards)
    assert no_temp_files(tmp_path)
    same_result(result, reference)


@pytest.mark.parametrize(
    ("name", "parent"),
    [
        ("shard_00003.npz", "neighbours"),  # the search shard by shard, inside deduplicate
        ("dedup.npz", "dedup"),
        ("selected.npz", "retrieve"),  # after clusters.npz and query_top.npz were written
    ],
)
def test_kill_in_a_later_stage_resumes_without_redoing_earlier_ones(
    world, reference, monkeypatch, tmp_path, name, parent
):
    root, vec, ckpt = world
    calls: list[list[str]] = []
    monkeypatch.setattr(embed, "embed_images", fake_embedder(vec, calls))
    kill_on(monkeypatch, name, parent)
    with pytest.raises(Killed):
        run(root, ckpt, tmp_path)
    assert not (tmp_path / parent / "done.json").exists()
    monkeypatch.undo()  # the writer works again
    calls.clear()
    monkeypatch.setattr(embed, "embed_images", fake_embedder(vec, calls))
    written = spy_writes(monkeypatch)
    result = run(root, ckpt, tmp_path)
    assert calls == [] and in_folder(written, "pool") == []  # nothing embedded again
    neighbours = in_folder(written, "neighbours")
    if parent == "neighbours":  # shards 0-2 were written before the kill: only 3-9 now
        assert [w for w in neighbours if w.startswith("shard_")] == [
            f"shard_{i:05d}.npz" for i in range(3, 10)
        ]
    else:
        assert neighbours == []
    assert (in_folder(written, "dedup") == []) == (parent == "retrieve")
    assert "selected.npz" in in_folder(written, "retrieve")
    assert no_temp_files(tmp_path)
    same_result(result, reference)


def test_a_finished_curation_is_reused_and_new_settings_rerun_only_later_stages(
    world, reference, monkeypatch, tmp_path
):
    root, vec, ckpt = world
    calls: list[list[str]] = []
    monkeypatch.setattr(embed, "embed_images", fake_embedder(vec, calls))
    first = run(root, ckpt, tmp_path)
    calls.clear()
    written = spy_writes(monkeypatch)
    again = run(root, ckpt, tmp_path)
    stage_dirs = ("pool", "query", "eval", "neighbours", "dedup", "retrieve")
    assert calls == [] and [w for w in written if w.split("/")[0] in stage_dirs] == []
    same_result(again, first)
    written.clear()
    strict = run(
        root, ckpt, tmp_path, CurateSettings(shard_size=4, figures=False, k=1, method="both")
    )
    assert calls == [] and in_folder(written, "neighbours") == in_folder(written, "dedup") == []
    assert "selected.npz" in in_folder(written, "retrieve")
    assert strict.summary["retrieved"]["k"] == 1
    assert strict.retrieved < first.retrieved
    other = tiny_checkpoint(tmp_path.parent / "other.pt", seed=99)
    with pytest.raises(ConfigError, match="other checkpoint weights"):
        run(root, other, tmp_path)
