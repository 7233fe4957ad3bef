"""Model metadata (lightseg.ModelMeta) through every file a model is written to: safetensors,
training checkpoints, and the files written before the metadata existed."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lightseg import CheckpointError, ModelMeta, create_model, load_checkpoint, save_weights
from lightseg.config import config_from_dict
from lightseg.meta import META_KEY


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_num_classes_none_is_the_models_own_default():
    assert create_model("frm_van_b0").num_classes == 19  # FRM's Cityscapes default
    assert create_model("cgrseg_t").meta.num_classes == 150
    assert create_model("frm_van_b0", 5).meta.num_classes == 5
    backbone = create_model("van_b0", num_classes=7)  # ignored by a backbone
    assert backbone.meta.kind == "backbone" and backbone.meta.num_classes is None


def test_meta_states_what_the_model_is():
    m = create_model("frm_van_b0", 3, use_frm=False)
    assert m.meta.options == {"use_frm": False}
    assert (m.meta.size_divisor, m.meta.output_stride) == (32, 4)
    assert create_model("cgrseg_t", 3).meta.output_stride == 8


def test_safetensors_round_trip_keeps_every_field(tmp_path):
    m = create_model("frm_van_b0", 3, use_frm=False)
    palette = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    path = save_weights(m, tmp_path / "m.safetensors", classes=["a", "b", "c"], palette=palette)
    back = load_checkpoint(path)
    assert back.meta == m.meta
    assert back.meta.classes == ("a", "b", "c") and back.meta.colours() == palette
    assert back.meta.options == {"use_frm": False} and _same_weights(back, m)


def test_save_weights_refuses_a_model_without_metadata(tmp_path):
    with pytest.raises(CheckpointError, match=r"model\.meta"):
        save_weights(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.safetensors")


def test_files_written_before_modelmeta_still_load(tmp_path):
    m = create_model("cgrseg_t", 4)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}
    header = {
        "format": "lightseg",
        "model_name": "cgrseg_t",
        "num_classes": "4",
        "model_kwargs": "{}",
        "classes": json.dumps(["w", "x", "y", "z"]),
        "palette": json.dumps([[0, 0, 0]] * 4),
    }
    save_file(state, str(tmp_path / "old.safetensors"), metadata=header)
    back = load_checkpoint(tmp_path / "old.safetensors")
    assert back.meta.classes == ("w", "x", "y", "z") and back.meta.palette == ((0, 0, 0),) * 4
    assert back.meta.output_stride == 8 and _same_weights(back, m)

    old_train = {
        "format": "lightseg-train",
        "model": m.state_dict(),
        "model_spec": {"name": "cgrseg_t", "num_classes": 4, "kwargs": {}},
    }
    torch.save(old_train, tmp_path / "old.pt")
    back = load_checkpoint(tmp_path / "old.pt")
    assert back.meta.name == "cgrseg_t" and back.meta.num_classes == 4 and _same_weights(back, m)


class _Labelled(torch.utils.data.Dataset):
    """Four 64x64 images with three classes, named and coloured like a real dataset."""

    num_classes, ignore_index = 3, 255
    classes = ("sky", "road", "car")
    palette = ((10, 20, 30), (40, 50, 60), (70, 80, 90))

    def __len__(self):
        return 4

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        g = np.random.default_rng(i)
        mask = torch.from_numpy(g.integers(0, 3, (64, 64)))
        return {"image": torch.randn(3, 64, 64), "mask": mask, "meta": {"image_path": f"{i}"}}


def test_training_checkpoint_carries_the_dataset_labels(tmp_path):
    from lightseg.training import train

    cfg = config_from_dict(
        {
            "data": {"num_workers": 0, "val_split": ""},
            "schedule": {"warmup_iters": 0},
            "train": {"iters": 1, "batch_size": 2, "log_interval": 1, "ckpt_interval": 1},
            "eval": {"interval": 0},
            "run": {"work_dir": str(tmp_path), "tensorboard": False},
        }
    )
    model = create_model("frm_van_b0", 3)
    train(cfg, model=model, train_set=_Labelled())
    ckpt = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    saved = ModelMeta.from_json(ckpt[META_KEY])
    assert saved.classes == ("sky", "road", "car") and saved.palette[2] == (70, 80, 90)
    back = load_checkpoint(tmp_path / "last.pt")
    assert back.meta == saved == model.meta
    assert _same_weights(back, model)
