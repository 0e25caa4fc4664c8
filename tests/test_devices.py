"""The one ``--device`` resolver: the same answer and the same one-line errors everywhere."""

from __future__ import annotations

import pytest
import torch

from fastdino_cli.cli import main
from fastdino_cli.devices import available_devices, resolve_device
from fastdino_cli.errors import ConfigError
from tests.probe_helpers import tiny_checkpoint

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_none_pick_cuda_only_when_there_is_one():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device(None).type == want
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert available_devices()[0] == "cpu"


@pytest.mark.parametrize("bad", ["gpu0", "cuda:x", "tpu", ""])
def test_a_string_that_is_no_device_is_one_config_error(bad):
    with pytest.raises(ConfigError, match="--device") as e:
        resolve_device(bad)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("asked", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_says_so_and_what_to_use(asked):
    with pytest.raises(ConfigError, match="no CUDA GPU is available.*--device cpu"):
        resolve_device(asked)


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "{ckpt}", "--train", "{train}", "--val", "{val}", "--device", "{dev}"],
        ["corrupt-eval", "{ckpt}", "--val", "{val}", "--device", "{dev}"],
        ["gradcam", "{ckpt}", "--images", "{val}", "--out", "{out}", "--device", "{dev}"],
        ["fourier-heatmap", "{ckpt}", "--data", "{val}", "--out", "{out}", "--device", "{dev}"],
    ],
    ids=["probe", "corrupt-eval", "gradcam", "fourier-heatmap"],
)
@pytest.mark.parametrize("dev", ["cuda", "gpu0"])
def test_every_evaluation_reports_a_missing_device_in_one_line(
    tmp_path, demo_data, capsys, argv, dev
):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    fill = {
        "ckpt": str(ckpt),
        "train": str(demo_data.train),
        "val": str(demo_data.val),
        "out": str(tmp_path / "out"),
        "dev": dev,
    }
    with pytest.raises(SystemExit) as e:
        main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.count("\n") == 1 and "--device" in err and "Traceback" not in err, err
