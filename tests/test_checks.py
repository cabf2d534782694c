"""Every own-network and size-dependent check runs before any stage (experiments.checks): one `error:`
line, exit 2, nothing created; what the checks find fixes the run's size and model, and config.json
describes the network explained instead of the preset's training fields."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from compnn_py.data import get_task  # noqa: E402
from compnn_py.data.synthetic import write_dataset  # noqa: E402
from experiments import checks  # noqa: E402
from experiments.errors import UserError  # noqa: E402
from experiments.tasks import run_config  # noqa: E402
from test_own_model import build_network  # noqa: E402  (32x32 RGB in, 11 class scores out, a Rescaling first)

ROOT = Path(__file__).resolve().parents[1]
LAYERS = "global:bottleneck,coarse:dec2,fine:dec1"


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "net.keras"
    build_network().save(path)
    return path


def _check(task="camvid", checkpoint=None, data_dir=None, match_method="both", size_given=False,
           model_given=False, **overrides):
    cfg = run_config(task, "quick", real_data=data_dir is not None, **overrides)
    return checks.before_stages(cfg, get_task(task), data_dir=data_dir, checkpoint=checkpoint,
                                match_method=match_method, size_given=size_given, model_given=model_given)


@pytest.mark.parametrize("layers, message", [
    ("global:dec1,coarse:dec2,fine:bottleneck", r"must go from coarse to fine .*global dec1 stride 1, "
                                                r"coarse dec2 stride 2, fine bottleneck stride 4"),
    ("global:bottleneck,coarse:dec2,fine:logits", "the fine layer logits is the network's output, not a feature map"),
    ("global:bottleneck,coarse:dec2,fine:scale", "the fine layer scale is computed from the input by layers "
                                                 "without weights"),
    ("global:image,coarse:dec2,fine:dec1", "the global layer image is the network's input layer"),
])
def test_layers_that_cannot_be_matched_are_refused(network, layers, message):
    with pytest.raises(UserError, match=message) as err:
        _check(checkpoint=network, match_layers=layers)
    assert "\n" not in str(err.value)


def test_the_network_fixes_size_and_model_and_is_described(network):
    cfg, net = _check(checkpoint=network, match_layers=LAYERS)
    assert cfg.size == (32, 32)  # the quick preset's 90x120 would not fit; the .keras fixes 32x32
    d = net.description
    assert d["input_size"] == [32, 32] and d["output_channels"] == 11 and d["architecture"] == "custom"
    assert d["parameters"] == build_network().count_params()
    assert d["match_layers"] == {"global": "bottleneck", "coarse": "dec2", "fine": "dec1", "decode2": "dec1"}
    shown = checks.configuration({"model": "segnet_basic", "steps": None, "epochs": 10, "ngf": 64, "batch_size": 4,
                                  "size": [32, 32]}, net)
    assert shown == {"size": [32, 32], "network": d}
    with pytest.raises(UserError, match="takes 32x32 images, not 48x48"):
        _check(checkpoint=network, match_layers=LAYERS, size=(48, 48), size_given=True)


def test_model_with_a_network_compnn_did_not_build_is_refused(network):
    with pytest.raises(UserError, match=r"--model=segnet_basic does not apply: .* holds network 'my_segmenter', "
                                        r"which compnn did not build; drop --model"):
        _check(checkpoint=network, match_layers=LAYERS, model_given=True)


def test_class_count_and_recorded_task_must_fit_the_task(network, tmp_path):
    with pytest.raises(UserError, match=r"outputs 11 class scores, --task=cityscapes has 19 classes"):
        _check("cityscapes", checkpoint=network, match_layers=LAYERS)
    # A network whose run directory records another task (the train stage writes it into config.json).
    own = tmp_path / "train"
    own.mkdir()
    build_network().save(own / "model.keras")
    (own / "config.json").write_text(json.dumps({"arch": "segnet_basic", "task": "camvid"}))
    with pytest.raises(UserError, match=r"holds a segnet_basic network trained for --task=camvid \(its config.json\), "
                                        r"not --task=facades_labels"):
        _check("facades_labels", checkpoint=own / "model.keras", match_layers=LAYERS)


def test_kernel_and_shortlist_bounds_before_any_data(tmp_path, network):
    with pytest.raises(UserError, match="--kernel must be at most 64"):
        _check(checkpoint=network, match_layers=LAYERS, kernel=65)
    data = tmp_path / "camvid"
    write_dataset("camvid", data, counts={"train": 3, "val": 1}, size=(24, 32), seed=0, progress=False)
    with pytest.raises(UserError, match="--shortlist 5 exceeds the 3 training images"):
        _check(data_dir=data, shortlist=5)
    with pytest.raises(UserError, match="--shortlist 5 exceeds the 4 training images"):
        _check(n_train=4, shortlist=5)  # synthetic: the count asked for
    assert _check(data_dir=data, shortlist=5, match_method="exact")[1] is None  # no shortlist: no limit


def test_tf1_checkpoint_depth_gives_the_size_and_a_truncated_one_fails_early(tmp_path):
    from test_tf1_checkpoint import reference_shapes, write_checkpoint

    write_checkpoint(tmp_path, reference_shapes("ops"))  # 5 levels: 32x32
    cfg, net = _check("facades", checkpoint=tmp_path)
    assert cfg.size == (32, 32) and cfg.model == "pix2pix"
    assert net.description["depth"] == 5 and net.description["ngf"] == 4 and net.description["form"] == \
        "pix2pix-tensorflow checkpoint"
    cfg, _ = _check("facades", checkpoint=tmp_path, size=(64, 64), size_given=True)  # --size still decides
    assert cfg.size == (64, 64)
    data = next(tmp_path.glob("model-1000.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(UserError, match=r"^--checkpoint .*: cannot read checkpoint .*truncated or damaged"):
        _check("facades", checkpoint=tmp_path, size=(64, 64), size_given=True)


def test_the_driver_stops_before_any_stage(tmp_path, network):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "experiments.run", "--task=camvid", "--n_train=4", "--n_query=1",
                          "--shortlist=2", f"--checkpoint={network}", f"--out_dir={out}",
                          "--match_layers=global:dec1,coarse:dec2,fine:bottleneck"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "coarse to fine" in errors[0]
    assert not out.exists()  # no run directory, no cache, no stage

    res = subprocess.run([sys.executable, "-m", "experiments.run", "--task=camvid", "--n_train=4", "--n_query=1",
                          "--shortlist=2", f"--checkpoint={network}", f"--out_dir={out}", f"--match_layers={LAYERS}",
                          "--stages=data,train"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (out / "config.json").exists()  # a partial run records itself under cache/, not beside a report
    conf = json.loads((out / "cache" / "last-run.json").read_text())
    assert conf["size"] == [32, 32] and conf["network"]["parameters"] == build_network().count_params()
    assert not {"steps", "epochs", "ngf", "model", "batch_size"} & set(conf)
    assert np.load(next((out / "cache").glob("data-*")) / "train_inputs.npy").shape == (4, 32, 32, 3)
