"""predict on real CamVid images, odd sizes, videos, batching and every kind of bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lightseg import Segmenter, save_weights
from lightseg.cli import main
from lightseg.deploy.media import collect_inputs
from lightseg.errors import InputError
from lightseg.inference import forward_whole
from lightseg.models import create_model
from lightseg.visualize import overlay

# CamVid palette, typed from shared/data/README.md (independent of lightseg.data).
CAMVID_PALETTE = [
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("cgrseg_t", num_classes=11).eval()


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "cgrseg_t_camvid.safetensors"
    return save_weights(model, path, palette=CAMVID_PALETTE)


@pytest.fixture(scope="module")
def seg(model):
    return Segmenter(model, runtime="torch", palette=CAMVID_PALETTE, optimize="fold-bn")


def test_predict_camvid_writes_palette_pngs_and_overlays(shared_data, weights, seg, tmp_path):
    images = sorted((shared_data / "camvid" / "test").glob("*.png"))[:2]
    rc = main(
        [
            "predict",
            "cgrseg_t",
            "--weights",
            str(weights),
            *map(str, images),
            "--out",
            str(tmp_path),
            "--no-progress",
            "--runtime",
            "torch",
        ]
    )
    assert rc == 0
    for img in images:
        label = Image.open(tmp_path / f"{img.stem}.png")
        over = Image.open(tmp_path / f"{img.stem}_overlay.jpg")
        assert label.mode == "P" and label.size == (480, 360) and over.size == (480, 360)
        assert np.array(label.getpalette()[:33]).reshape(11, 3).tolist() == CAMVID_PALETTE
        # The file holds the labels the API computes.
        expected = seg(Image.open(img))
        assert (np.asarray(label) == expected).mean() >= 0.999


def test_odd_size_and_batching_match_eager(model, seg):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (361, 479, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (361, 479, 3), dtype=np.uint8)
    batched = Segmenter(model, runtime="torch", optimize="none", batch_size=2)([a, b])
    for img, lab in zip((a, b), batched):
        assert lab.shape == (361, 479)
        x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - seg.mean) / seg.std
        with torch.no_grad():
            ref = forward_whole(model, x).argmax(1)[0].numpy()
        assert (lab == ref).mean() >= 0.999
        assert (seg(img) == ref).mean() >= 0.999  # folded-BN segmenter too


def test_video_input(weights, tmp_path):
    av = pytest.importorskip("av")
    src = tmp_path / "clip.mp4"
    with av.open(str(src), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(3):
            frame = np.full((64, 96, 3), 40 * i, dtype=np.uint8)
            for p in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    rc = main(
        [
            "predict",
            "cgrseg_t",
            "--weights",
            str(weights),
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--runtime",
            "torch",
        ]
    )
    assert rc == 0
    for name in ("clip_overlay.mp4", "clip_labels.mp4"):
        with av.open(str(tmp_path / "o" / name)) as f:
            frames = list(f.decode(video=0))
        assert len(frames) == 3 and (frames[0].width, frames[0].height) == (96, 64)


def test_folder_with_corrupt_image_reports_failure(shared_data, weights, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((shared_data / "camvid" / "test").glob("*.png"))[0]
    (folder / "good.png").write_bytes(good.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    rc = main(
        [
            "predict",
            "cgrseg_t",
            "--weights",
            str(weights),
            str(folder),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--runtime",
            "torch",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert "broken.png" in captured.err and "cannot read image" in captured.err
    assert "notes.txt" in captured.out  # listed as skipped, not silently ignored
    assert (tmp_path / "o" / "good.png").is_file()


def test_empty_dir_and_unsupported_file_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty.*no images"):
        collect_inputs([empty])
    txt = tmp_path / "a.txt"
    txt.write_text("x")
    with pytest.raises(InputError, match=r"a\.txt.*unsupported"):
        collect_inputs([txt])
    with pytest.raises(FileNotFoundError, match="missing"):
        collect_inputs([tmp_path / "missing.png"])


def test_weights_for_wrong_number_of_classes(weights, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    rc = main(
        [
            "predict",
            "cgrseg_t",
            "--weights",
            str(weights),
            "--num-classes",
            "19",
            str(img),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert Path(weights).name in err and "holds weights for 11 classes, not 19" in err


def _write_video(path, frames=10):
    import av

    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            frame = np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8)
            for p in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


@pytest.mark.parametrize("suffix", [".avi", ".mkv"])  # frame count in the header / only a duration
def test_truncated_video_reports_the_frames_decoded(weights, tmp_path, capsys, suffix):
    pytest.importorskip("av")
    whole = tmp_path / f"whole{suffix}"
    _write_video(whole)
    cut = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    argv = [
        "predict",
        str(weights),
        str(cut),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        "--runtime",
        "torch",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cut{suffix}" in err and "truncated or damaged video: decoded 3" in err
    # What was decoded is kept.
    import av

    with av.open(str(tmp_path / "o" / "cut_overlay.mp4")) as f:
        assert len(list(f.decode(video=0))) == 3


def test_out_that_is_a_file_is_a_clear_error(weights, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    out = tmp_path / "taken.txt"
    out.write_text("x")
    assert main(["predict", str(weights), str(img), "--out", str(out), "--runtime", "torch"]) == 2
    err = capsys.readouterr().err
    assert "taken.txt" in err and "is a file" in err


def test_overlay_has_a_legend_of_the_classes_present(weights, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.full((120, 160, 3), 255, np.uint8)).save(img)
    argv = ["predict", str(weights), str(img), "--out", str(tmp_path / "o"), "--runtime", "torch"]
    assert main([*argv, "--overlay-format", "png", "--dataset", "camvid", "--no-progress"]) == 0
    labels = np.asarray(Image.open(tmp_path / "o" / "x.png"))
    over = np.asarray(Image.open(tmp_path / "o" / "x_overlay.png"))
    plain = np.asarray(overlay(Image.open(img), labels, CAMVID_PALETTE, 0.5))
    assert over.shape == plain.shape
    # The legend box sits in the top-left corner, darker than the overlay; the rest is untouched,
    # and the most frequent class's swatch shows its palette colour.
    assert over[:12, :12].mean() < plain[:12, :12].mean()
    assert np.array_equal(over[-20:, -40:], plain[-20:, -40:])
    top = np.bincount(labels.ravel()).argmax()
    assert (over[5:18, 5:18] == CAMVID_PALETTE[top]).all(-1).sum() >= 9


def test_one_input_after_weights_and_a_mistyped_checkpoint(weights, tmp_path, capsys):
    """`predict --weights CKPT img.png` (no model name, one input) runs; a checkpoint path that
    does not exist is named as a missing file, not as an unknown model; no inputs is said so."""
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    out = tmp_path / "o"
    assert (
        main(["predict", "--weights", str(weights), str(img), "--out", str(out), "--runtime", "torch"]) == 0
    )
    assert Image.open(out / "x.png").size == (64, 64)
    missing = tmp_path / "runs" / "best.pt"
    assert main(["predict", str(missing), str(img), "--out", str(out)]) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err
    assert main(["predict", str(weights), "--out", str(out)]) == 2
    assert "nothing to predict" in capsys.readouterr().err
