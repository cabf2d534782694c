"""What the README promises about the train stage's ``model.keras``: in a fresh Python, plain
``keras.models.load_model`` reloads it after ``import tf_models`` (which registers compnn's custom
layers), with no ``custom_objects``; without that import Keras cannot rebuild the network."""

import json
import subprocess
import sys
import textwrap

import numpy as np

from tf_models import segnet, train


def test_model_keras_loads_in_plain_keras_after_import_tf_models(tmp_path):
    model = segnet.build_segnet_basic((16, 16, 3), num_classes=3)
    path = train.save_network(model, tmp_path / train.MODEL_FILE)
    x = np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = np.asarray(model(x, training=False))
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import keras
        path = {str(path)!r}
        try:
            keras.models.load_model(path)
            without = "loaded"
        except Exception as err:  # what a user sees without the import
            without = type(err).__name__ + ": " + str(err).splitlines()[0]
        assert "tf_models" not in sys.modules
        import tf_models  # registers compnn's layers: the only thing needed
        net = keras.models.load_model(path)
        y = np.asarray(net(np.load({str(tmp_path / "x.npy")!r}), training=False))
        np.save({str(tmp_path / "y.npy")!r}, y)
        print(json.dumps({{"without": without, "name": net.name}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["name"] == model.name
    assert result["without"] != "loaded"  # the import really is required
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
