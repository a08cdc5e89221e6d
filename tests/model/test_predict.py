import io
import json

import numpy as np
import pytest
from PIL import Image

from mnist_exp.cli import main
from mnist_exp.model.predict import to_mnist

from helpers import cli_here


def corr(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_mnist_digits_come_back_as_themselves(embedded):
    c = np.array([corr(to_mnist(img), img / 255.0) for img in embedded["x_test"][:200]])
    assert np.median(c) > 0.99 and c.min() > 0.7  # a centre of mass near a half pixel may round the other way


@pytest.mark.parametrize("side, pad", [(28, (0, 0)), (100, (40, 0)), (300, (0, 90))])
def test_both_polarities_and_any_size_reach_the_same_mnist_form(embedded, side, pad):
    scores = []
    for img in embedded["x_test"][:10]:
        reference = to_mnist(img)
        big = np.asarray(Image.fromarray(np.pad(img, 6)).resize((side, side), Image.BILINEAR))
        big = np.pad(big, ((pad[0], 0), (0, pad[1])))  # off-centre, non-square canvas
        for variant in (big, 255 - big):  # light-on-dark and dark-on-light
            buf = io.BytesIO()
            Image.fromarray(variant).save(buf, format="PNG")
            got = to_mnist(np.asarray(Image.open(buf).convert("L")))
            assert got.shape == (28, 28)
            ys, xs = np.indices(got.shape)
            assert abs((ys * got).sum() / got.sum() - 14) < 1 and abs((xs * got).sum() / got.sum() - 14) < 1
            scores.append(corr(got, reference))
    assert min(scores) > 0.6 and np.mean(scores) > 0.8  # resampling blurs; a wrong centring or polarity gives < 0.3


@pytest.mark.slow
def test_predict_cli_on_png_jpeg_and_npz_with_the_champion(swept_store, embedded, capsys):
    assert main(["promote", "a"]) == 0
    import mlflow

    model = mlflow.pyfunc.load_model("models:/mnist-cnn@champion")
    digits = embedded["x_test"][:8]
    expected = np.asarray(model.predict((np.stack([to_mnist(d) for d in digits])[..., None]).astype(np.float32)))
    files = []
    for i, d in enumerate(digits):
        im = Image.fromarray(255 - d).resize((84, 84), Image.BILINEAR) if i % 2 else Image.fromarray(d)
        path = swept_store / (f"d{i}.jpg" if i % 4 == 3 else f"d{i}.png")
        im.convert("RGB").save(path, quality=95) if path.suffix == ".jpg" else im.save(path)
        files.append(str(path))
    np.savez(swept_store / "batch.npz", x=digits[:3])
    capsys.readouterr()
    assert main(["predict", *files, str(swept_store / "batch.npz"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "━" not in captured.out + captured.err  # no Keras progress bar ("8/1" before), on either stream
    lines = [json.loads(x) for x in captured.out.strip().splitlines()]
    assert [x["file"] for x in lines] == files + [f"{swept_store / 'batch.npz'}[{i}]" for i in range(3)]
    for x in lines:
        assert len(x["probabilities"]) == 10 and abs(sum(x["probabilities"]) - 1) < 1e-3
        assert x["label"] == int(np.argmax(x["probabilities"]))
    agree = sum(x["label"] == int(e.argmax()) for x, e in zip(lines, expected))
    assert agree >= 7  # resizing and JPEG may flip a borderline digit of this tiny model
    assert [x["label"] for x in lines[-3:]] == [int(e.argmax()) for e in expected[:3]]

    # A dark digit on a transparent background reads as that digit; a blank image is flagged, not classified (exit 1).
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digits[0]
    Image.fromarray(rgba, "RGBA").resize((56, 56), Image.BILINEAR).save(swept_store / "clear_bg.png")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(swept_store / "blank.png")
    assert main(["predict", str(swept_store / "clear_bg.png"), str(swept_store / "blank.png"), "--json"]) == 1
    digit, blank = (json.loads(x) for x in capsys.readouterr().out.strip().splitlines())
    assert digit["digit_found"] and digit["label"] == int(expected[0].argmax())
    assert blank == {"file": str(swept_store / "blank.png"), "digit_found": False, "reason": "blank image",
                     "label": None, "probability": None, "probabilities": None}


@pytest.mark.slow
def test_unreadable_image_is_one_line_exit_2(swept_store):
    bad = swept_store / "notes.png"
    bad.write_text("not an image")
    proc = cli_here("predict", bad, check=2)
    assert proc.stderr.strip().splitlines()[-1].startswith(f"mnist-exp predict: error: {bad}: not a readable image")
    proc = cli_here("predict", swept_store / "missing.png", check=2)
    assert "missing.png: no such file" in proc.stderr
