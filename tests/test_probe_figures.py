"""The per-class accuracy figure: sorting, classes without val images, many classes."""

from __future__ import annotations

from types import SimpleNamespace

from PIL import Image

from fastdino_cli.figures.probe import draw_probe, plot_per_class, sorted_per_class


def test_sorted_per_class_orders_worst_first_and_skips_empty_classes():
    records = [
        {"class": "b", "num_val": 4, "linear": 50.0},
        {"class": "a", "num_val": 4, "linear": 50.0},
        {"class": "c", "num_val": 0, "linear": None},
        {"class": "d", "num_val": 2, "linear": 0.0},
    ]
    names, values = sorted_per_class(records)
    assert names == ["d", "a", "b"] and values.tolist() == [0.0, 50.0, 50.0]


def test_plot_per_class_few_and_many_classes(tmp_path):
    few = [{"class": f"c{i}", "linear": 10.0 * i} for i in range(8)]
    many = [{"class": f"n{i:04d}", "linear": (37 * i) % 101} for i in range(300)]
    for name, records in (("few.png", few), ("many.png", many)):
        path = plot_per_class(records, tmp_path / "sub" / name, title=name, overall=40.0)
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200


def test_draw_probe_draws_only_stored_heads(tmp_path):
    ckpt = tmp_path / "run" / "final.pt"
    linear = SimpleNamespace(spec=SimpleNamespace(label=lambda: "1blk lr=0.1"), val_top1=25.0)
    per_class = [{"class": "a", "linear": 0.0}, {"class": "b", "linear": 50.0}]
    stored = SimpleNamespace(stored_in=str(ckpt), per_class=per_class, checkpoint=str(ckpt),
                             linear=linear)  # fmt: skip
    twin = SimpleNamespace(stored_in=None, per_class=per_class, checkpoint=str(ckpt),
                           linear=linear)  # fmt: skip
    drawn = draw_probe(SimpleNamespace(rows=[stored, twin]))
    assert drawn == [tmp_path / "run" / "probe" / "final_per_class.png"]
    assert drawn[0].is_file()
