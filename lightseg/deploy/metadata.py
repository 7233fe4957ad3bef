"""Exported files that carry what they are: the model's :class:`~lightseg.meta.ModelMeta` and an
:class:`ExportInfo` (input size, batch, output, precision, folding) stored in the file — ONNX
``metadata_props``, OpenVINO ``rt_info`` — and read back by every runner, ``eval`` and ``bench``."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lightseg.deploy import signal_stack
from lightseg.deploy.extras import import_openvino
from lightseg.deploy.formats import FORMATS
from lightseg.errors import InputError, InputNotFoundError
from lightseg.meta import META_KEY, ModelMeta

# --------------------------------------------------------------------------------------------------
# Files that carry what they are
# --------------------------------------------------------------------------------------------------
EXPORT_KEY = "lightseg_export"


@dataclass(frozen=True)
class ExportInfo:
    """How an exported graph was made: static input size (H, W), batch (``None``: dynamic), what it
    returns (:data:`OUTPUTS`), its precision and BN folding, and the lightseg version that wrote it."""

    input_size: tuple[int, int]
    batch: int | None
    output: str
    precision: str
    optimize: str
    lightseg_version: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ExportInfo:
        try:
            d = json.loads(text)
            d["input_size"] = tuple(d["input_size"])
            return cls(**d)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{source}: unreadable lightseg export record ({e}); re-export the file") from e


def write_onnx_metadata(path: Path, meta: ModelMeta, info: ExportInfo) -> None:
    """Store ``meta`` and ``info`` as the ONNX file's ``metadata_props`` (JSON strings)."""
    import onnx

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({META_KEY: meta.to_json(), EXPORT_KEY: info.to_json()})
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def read_file_metadata(path: str | os.PathLike) -> tuple[dict[str, str], tuple, str]:
    """(lightseg metadata strings, input shape, output tensor name) of an ``.onnx``/``.xml`` file."""
    path = Path(path)
    check_ir_files(path)
    if is_openvino_ir(path):
        ov = import_openvino()
        try:
            with signal_stack.kept():
                model = ov.Core().read_model(str(path))
        except Exception as e:
            raise InputError(f"{path}: OpenVINO cannot read this file ({str(e).splitlines()[0]})") from e
        props = {
            k: str(model.get_rt_info([k]).astype(str))
            for k in (META_KEY, EXPORT_KEY)
            if model.has_rt_info([k])
        }
        shape = tuple(d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape())
        return props, shape, model.outputs[0].get_any_name()
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return props, shape, proto.graph.output[0].name


def exported_facts(path: str | os.PathLike, meta: ModelMeta | None = None) -> tuple[ModelMeta, ExportInfo]:
    """The model metadata and export record stored in an exported file.

    A file exported by another tool carries neither: then ``meta`` must give the model's facts
    (the export record is read from the graph: its input size, a logits output, fp32); without
    it the error lists what is missing and how to pass it.
    """
    path = Path(path)
    props, shape, _ = read_file_metadata(path)
    source = str(path)
    if META_KEY in props and meta is None:
        meta = ModelMeta.from_json(props[META_KEY], source)
    if meta is None:
        raise InputError(
            f"{path}: the file carries no lightseg metadata ({META_KEY}); missing: {MISSING_FACTS} "
            "(classes and palette optional). Re-export it with `lightseg export CHECKPOINT --format "
            f"{'openvino' if is_openvino_ir(path) else 'onnx'}`, or pass the facts: "
            "`--meta meta.json` (a JSON object with name, num_classes, mean, std, size_divisor, "
            "output_stride, classes, palette) or in Python `Segmenter(path, meta=lightseg.ModelMeta(...))`"
        )
    if EXPORT_KEY in props:
        return meta, ExportInfo.from_json(props[EXPORT_KEY], source)
    if len(shape) != 4 or shape[2] is None or shape[3] is None:
        raise InputError(f"{path}: expected an N x 3 x H x W input of static H and W, got {shape}")
    return meta, ExportInfo((shape[2], shape[3]), shape[0], "logits", "fp32", "unknown", "unknown")


# --------------------------------------------------------------------------------------------------
# Reading what an exported file is
# --------------------------------------------------------------------------------------------------
MISSING_FACTS = "model name, number of classes, mean/std, size divisor, output stride"


def read_meta_file(path: str | os.PathLike) -> ModelMeta:
    """A :class:`ModelMeta` from a JSON file (``--meta``), for files exported by other tools."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"metadata file not found: {p}")
    return ModelMeta.from_json(p.read_text(), str(p))


def is_openvino_ir(path: Path) -> bool:
    return path.suffix == FORMATS["openvino"].suffix


def check_ir_files(path: Path) -> None:
    """An OpenVINO IR is two files side by side; fail naming the one that is missing."""
    if not path.is_file():
        raise InputNotFoundError(f"model file not found: {path}")
    if is_openvino_ir(path) and not path.with_suffix(".bin").is_file():
        raise InputError(
            f"{path}: its weights file {path.with_suffix('.bin').name} is missing; an OpenVINO IR is "
            "two files, NAME.xml and NAME.bin, kept in the same folder (copy both, or re-export)"
        )
