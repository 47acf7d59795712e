"""A saved flow: a directory with ``config.json`` (shapes, field, solver, dtype) and ``weights.safetensors``,
written atomically and read back without trusting anything before it is checked."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .. import validate as V
from .._version import __version__
from ..config import FieldConfig, check_solver
from ..io import atomic_dir, check_output, check_regular_file, read_json, recover_dir
from ..errors import FlowFileError, InvalidInputError, InvalidTypeError, MissingFileError, NonFiniteOutputError
from ..fields import FIELDS, check_sizes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT = "pfm.PreferenceFlow"
FORMAT_VERSION = 1


def flow_config(flow: nn.Module) -> dict[str, Any]:
    """What ``config.json`` holds for ``flow`` (a :class:`pfm.PreferenceFlow`; this module never imports its
    class, which imports this one): the format, the shapes, the field's type and sizes, the solver, the dtype.
    :func:`read_config` reads it back."""
    field: dict[str, Any]
    if flow.field_type == "custom":
        cls = type(flow.field)
        field = {"type": "custom", "class": f"{cls.__module__}:{cls.__qualname__}"}
    else:
        field = {"type": flow.field_type, "config": flow.field.config()}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "pfm_version": __version__,
            "output_shape": list(flow.output_shape), "num_classes": flow.num_classes,
            "context_shape": None if flow.context_shape is None else list(flow.context_shape),
            "field": field, "solver": dict(flow.solver),
            "dtype": str(flow.y_shift.dtype).replace("torch.", "")}


def save_flow(flow: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``flow`` (a :class:`pfm.PreferenceFlow`) into ``directory`` (see :meth:`pfm.PreferenceFlow.save`)."""
    from safetensors.torch import save_file

    check_output(directory, "directory", kind="flow")
    config = flow_config(flow)
    check_solver(config["solver"], "flow.solver")
    state = {k: v.detach().cpu().contiguous() for k, v in flow.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteOutputError(f"the flow's {', '.join(bad[:3])} hold NaN or infinite values; refusing to "
                                   "save a broken flow")
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return Path(directory)


def load_flow(cls: type, directory: str | os.PathLike, *, field: Optional[nn.Module] = None,
              device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the flow saved in ``directory`` (see :meth:`pfm.PreferenceFlow.load`)."""
    if field is not None and not isinstance(field, nn.Module):
        raise InvalidTypeError(f"field must be an nn.Module, got {type(field).__name__}")
    device = V.check_device(device)
    directory = Path(directory)
    cfg = read_config(directory)
    weights = directory / WEIGHTS_NAME
    header = read_weights_header(weights)
    _check_buffer_shapes(directory, cfg, header)
    build = _builder(cls, directory, cfg, header, field)
    _check_shapes_before_building(directory, build, header)
    flow = build()  # the sizes now match a file that exists: building takes what the file holds
    flow.solver.update(cfg["solver"])
    _load_weights(flow, directory, weights, getattr(torch, cfg["dtype"]))
    return flow.to(device).eval()


def _check_buffer_shapes(directory: Path, cfg: dict[str, Any], header: dict[str, tuple[str, list[int]]]) -> None:
    expected = {"y_shift": list(cfg["output_shape"]), "y_scale": [],
                "c_shift": list(cfg["context_shape"] or [1]), "c_scale": list(cfg["context_shape"] or [1])}
    for name, shape in expected.items():
        got = header.get(name, (None, None))[1]
        if got != shape:
            raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: {name} has shape "
                                f"{got} in {WEIGHTS_NAME}, {shape} by the config")


def _builder(cls: type, directory: Path, cfg: dict[str, Any], header: dict[str, tuple[str, list[int]]],
             field: Optional[nn.Module]) -> Callable[[], nn.Module]:
    """A function that builds the flow the config describes, once its sizes are checked against the weights."""
    fcfg = cfg["field"]
    common = dict(num_classes=cfg["num_classes"], context_shape=cfg["context_shape"])
    if fcfg["type"] == "custom":
        if field is None:
            raise FlowFileError(f"{str(directory)!r} holds a custom field ({fcfg.get('class')}); pass an "
                                "instance of it as load(..., field=module)")
        return lambda: cls(cfg["output_shape"], field=field, **common)
    kw = {k: v for k, v in fcfg["config"].items() if k not in ("output_shape", "num_classes", "context_shape")}
    kw.setdefault("time_max_freq", 1000.0)  # files written before the setting existed
    # every size the config names must appear in some weight's shape, and the layers be no more than the
    # weights: a tampered config is refused before building anything
    dims = {int(d) for _, shape in header.values() for d in shape} | {1}
    keys = ("hidden", "time_dim", "emb_dim") + (("context_dim",) if common["num_classes"] or
                                                common["context_shape"] else ())
    for key in keys:
        if isinstance(kw.get(key), int) and kw[key] not in dims:
            raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: no weight has "
                                f"a dimension of {key}={kw[key]}")
    if isinstance(kw.get("depth"), int) and kw["depth"] > len(header):
        raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: depth="
                            f"{kw['depth']} layers, but the file holds {len(header)} tensors")
    return lambda: cls(cfg["output_shape"], field=fcfg["type"], **common, **kw)


def _check_shapes_before_building(directory: Path, build: Callable[[], nn.Module],
                                  header: dict[str, tuple[str, list[int]]]) -> None:
    """Build the flow on the ``meta`` device (no memory) and compare its tensors' shapes with the file's."""
    try:
        with torch.device("meta"):
            shell = build()
    except (TypeError, KeyError, InvalidInputError, RuntimeError, NotImplementedError) as exc:
        raise FlowFileError(f"{str(directory)!r} has a config this version cannot build: {exc}") from None
    want = {k: list(v.shape) for k, v in shell.state_dict().items()}
    del shell
    have = {k: shape for k, (_, shape) in header.items()}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        what = (f"missing {missing[:3]}" if missing else "") + ("; " if missing and unexpected else "") + \
               (f"unexpected {unexpected[:3]}" if unexpected else "")
        raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: {what}")
    for k in want:
        if want[k] != have[k]:
            raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: size mismatch for "
                                f"{k}: {have[k]} in {WEIGHTS_NAME}, {want[k]} by the config")


def _load_weights(flow: nn.Module, directory: Path, weights: Path, dtype: torch.dtype) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FlowFileError(f"{str(weights)!r} is not a readable safetensors file ({exc})") from None
    flow.to(dtype)
    try:
        flow.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln),
                     lines[0] if lines else "")
        raise FlowFileError(f"the weights in {str(directory)!r} do not match its config: {first}") from None
    for name, t in flow.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FlowFileError(f"{str(weights)!r} holds NaN or infinite values in {name!r}; the flow is broken")
    for name in ("y_scale", "c_scale"):
        if not bool((getattr(flow, name) > 0).all()):
            raise FlowFileError(f"{str(weights)!r} holds a {name} that is not positive; the flow is broken")


WEIGHT_DTYPES = ("float32", "float64", "float16", "bfloat16")

_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def read_weights_header(path: str | os.PathLike) -> dict[str, tuple[str, list[int]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's header, checked against the file's size (every
    tensor's bytes must lie inside the file) without reading the tensors."""
    path = Path(path)
    if not path.exists():
        raise FlowFileError(f"{str(path.parent)!r} has no {path.name}")
    check_regular_file(path, "safetensors file", FlowFileError)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n <= 0 or n > min(size - 8, 100 << 20):
                raise FlowFileError(f"{str(path)!r} is not a readable safetensors file (Error while deserializing "
                                    "header: invalid header length)")
            meta = json.loads(f.read(n))
    except PermissionError:
        raise FlowFileError(f"{str(path)!r} cannot be read (permission denied)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FlowFileError(f"{str(path)!r} is not a readable safetensors file (its header is not JSON)") from None
    if not isinstance(meta, dict):
        raise FlowFileError(f"{str(path)!r} is not a readable safetensors file (its header is not a JSON object)")
    out: dict[str, tuple[str, list[int]]] = {}
    room = size - 8 - n
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (dtype in _ST_DTYPES and isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)
                  and type(a) is int and type(b) is int and 0 <= a <= b <= room
                  and b - a == math.prod(shape) * _ST_DTYPES[dtype])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise FlowFileError(f"{str(path)!r} is not a readable safetensors file (tensor {name!r} is described "
                                "wrongly or lies beyond the end of the file)")
        out[name] = (dtype, shape)
    return out


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a saved flow, checked to be one: every setting by type and range (a tampered file is a
    :class:`FlowFileError` naming the file and the setting)."""
    directory = Path(directory)
    recover_dir(directory)  # a save cut between its two renames, on systems without an atomic exchange
    if not directory.exists():
        raise MissingFileError(f"no such flow directory: {str(directory)!r}")
    if not directory.is_dir():
        raise FlowFileError(f"{str(directory)!r} is a file; a saved flow is a directory with {CONFIG_NAME} "
                            f"and {WEIGHTS_NAME}")
    path = directory / CONFIG_NAME
    if not path.exists():
        raise FlowFileError(f"{str(directory)!r} is not a saved flow: it has no {CONFIG_NAME}")
    if path.stat().st_size > 1 << 20:
        raise FlowFileError(f"{str(path)!r} is {path.stat().st_size:,} bytes; a flow's config is a few hundred")
    try:
        cfg = read_json(path, FlowFileError)
    except PermissionError:
        raise FlowFileError(f"{str(path)!r} cannot be read (permission denied)") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else None
        raise FlowFileError(f"{str(path)!r} is not a pfm flow config (format {found!r})")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise FlowFileError(f"{str(directory)!r} was written in flow format {cfg.get('format_version')}; this "
                            f"version of pfm reads format {FORMAT_VERSION}")
    for key in ("output_shape", "field"):
        if key not in cfg:
            raise FlowFileError(f"{str(path)!r} lacks {key!r}")
    cfg.setdefault("num_classes", None)
    cfg.setdefault("context_shape", None)
    cfg.setdefault("solver", {})
    cfg.setdefault("dtype", "float32")
    try:
        check_sizes(cfg["output_shape"], cfg["num_classes"], cfg["context_shape"])
        if cfg["num_classes"] is not None and cfg["context_shape"] is not None:
            raise InvalidInputError("it gives both num_classes and context_shape")
        check_solver(cfg["solver"], "solver")
        if cfg["dtype"] not in WEIGHT_DTYPES:
            raise InvalidInputError(f"dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {cfg['dtype']!r}")
        field = cfg["field"]
        if not isinstance(field, dict) or field.get("type") not in (*FIELDS, "custom"):
            what = field.get("type") if isinstance(field, dict) else field
            raise InvalidInputError(f"field must name a type ({', '.join(FIELDS)} or custom), got {what!r}")
        if field["type"] != "custom":
            fc = field.get("config")
            if not isinstance(fc, dict):
                raise InvalidInputError(f"field config must be an object, got {type(fc).__name__}")
            known = {"output_shape", "num_classes", "context_shape", *FieldConfig.settings_of(field["type"])}
            unknown = sorted(set(fc) - known)
            if unknown:
                raise InvalidInputError(f"the {field['type']} field has no setting(s) {unknown}")
    except InvalidInputError as exc:
        raise FlowFileError(f"{str(path)!r} is not a valid flow config: {exc}") from None
    return cfg
