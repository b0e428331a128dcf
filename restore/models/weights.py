"""Saving and loading our nets (the generator, the learned detector) without executing code from the file.

The file is a plain `torch.save` dict of tensors and primitives (read back with `weights_only=True`): a format
tag, the config dataclass that built the weights (so loading rebuilds the same model; fields added since the file
was written take their defaults), the state dict, a digest of the tensors (torch's zip reader does not check CRCs,
so without it a flipped byte would load silently) and a small info dict (training steps, wall time...). Loading reports the file's sha256, which identifies the weights in
every manifest row.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from pathlib import Path

import torch

from restore.models.generator import Generator, GeneratorConfig

FORMAT = "restore-generator/1"


class WeightsError(ValueError):
    """The weights file is missing, corrupt, tampered with or not the restore net it should be."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_digest(state_dict: dict) -> str:
    """sha256 over every tensor's name, dtype, shape and values: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def save_net(net: torch.nn.Module, path: str | os.PathLike, fmt: str, info: dict | None = None) -> str:
    """Write a net (fp32 state dict + its `config` dataclass + info) atomically under format tag `fmt`; returns
    the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    payload = {
        "format": fmt,
        "config": dataclasses.asdict(net.config),
        "state_dict": state_dict,
        "tensor_sha256": tensor_digest(state_dict),
        "info": dict(info or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def _unpickling_reason(error: Exception) -> str:
    """The cause in torch's message, without its advice to load with weights_only=False, which would run whatever
    code the file holds."""
    lines = [line.strip() for line in str(error).splitlines()]
    causes = [line for line in lines if line and "weights_only" not in line and not line.startswith(
        ("Weights only load failed", "Check the documentation", "Please file an issue"))]
    return causes[0] if causes else type(error).__name__


def load_net(path: str | os.PathLike, fmt: str, net_class, config_class) -> tuple[torch.nn.Module, dict]:
    """(net in eval mode, info) from a file `save_net` wrote with format tag `fmt`; info holds the stored info plus
    `sha256`, `path` and `config`. Anything else (missing, corrupt, edited, foreign, NaN) raises WeightsError."""
    path = Path(path)
    kind = fmt.split("/")[0].removeprefix("restore-")  # generator, detector
    if not path.is_file():
        raise WeightsError(f"{kind} weights file not found: {path}")
    data = path.read_bytes()  # hashed and loaded from the same bytes: the sha256 reported is that of these weights
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means the file is not what we wrote
        raise WeightsError(f"cannot read {kind} weights {path}: {_unpickling_reason(e)} (only tensors and plain "
                           "values are loaded from a weights file: nothing in it runs)") from e
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise WeightsError(f"{path} is not a restore {kind} file (expected format {fmt!r})")
    fields = {f.name for f in dataclasses.fields(config_class)}
    config = payload.get("config")
    if not isinstance(config, dict) or not set(config) <= fields:  # fields added since take their defaults
        raise WeightsError(f"{path}: {kind} config must have only the fields {sorted(fields)}")
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or payload.get("tensor_sha256") != tensor_digest(state_dict):
        raise WeightsError(f"{path}: tensor checksum mismatch: the file is corrupt or was modified")
    try:
        net = net_class(config_class(**config))
        net.load_state_dict(state_dict, strict=True)
    except Exception as e:  # wrong values, shapes, missing or extra tensors
        raise WeightsError(f"{path}: weights do not match their config: {e}") from e
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise WeightsError(f"{path}: weights contain NaN or infinity")
    info = dict(payload.get("info") or {})
    info.update(sha256=hashlib.sha256(data).hexdigest(), path=str(path), config=dataclasses.asdict(net.config))
    return net.eval(), info


def save_generator(generator: Generator, path: str | os.PathLike, info: dict | None = None) -> str:
    return save_net(generator, path, FORMAT, info)


def load_generator(path: str | os.PathLike) -> tuple[Generator, dict]:
    """(generator in eval mode, info) where info holds the stored info plus `sha256`, `path` and `config`."""
    return load_net(path, FORMAT, Generator, GeneratorConfig)
