"""Checkpoints stored as recipes: a whole CenterMask state dict in a few hundred kilobytes.

A recipe (``weights_recipe.json`` + ``weights_exact.npz``) lists every tensor of a state dict.
Tensors under ``"generated"`` are ``uniform(-scale, scale)`` draws from numpy's PCG64 seeded
with ``(crc32(name) + base_seed) mod 2**32`` (``.random(numel)`` in float64, mapped to
``(u * 2 - 1) * scale``, cast to float32); the others are stored exactly in the npz.
The bundled sample (``tools/sample``) and the golden test cases carry their weights this way.
"""

from __future__ import annotations

import json
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError, MissingFileError

__all__ = ["recipe_arrays", "write_checkpoint"]


def recipe_arrays(case_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Materialize a recipe into ``{name: float32 array}`` in state-dict order."""
    root = Path(case_dir)
    recipe_path = root / "weights_recipe.json"
    if not recipe_path.is_file():
        raise MissingFileError(f"no weights recipe at {str(recipe_path)!r}")
    recipe = json.loads(recipe_path.read_text())
    exact = np.load(root / recipe["exact_npz"])
    out: dict[str, np.ndarray] = {}
    for name in recipe["order"]:
        gen = recipe["generated"].get(name)
        if gen is None:
            out[name] = exact[name]
            continue
        seed = (zlib.crc32(name.encode()) + int(recipe["base_seed"])) % (2**32)
        shape = tuple(gen["shape"])
        u = np.random.Generator(np.random.PCG64(seed)).random(int(np.prod(shape)))
        out[name] = ((u * 2.0 - 1.0) * gen["scale"]).astype(np.float32).reshape(shape)
    return out


def write_checkpoint(case_dir: str | os.PathLike, path: str | os.PathLike, fmt: str = "pth") -> Path:
    """Write a recipe as a detectron2 ``.pth`` (``{"model": tensors, "iteration": 0}``) or a
    model-zoo style ``.pkl`` (``{"model": numpy arrays, "__author__": "recipe"}``)."""
    arrays = recipe_arrays(case_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "pkl":
        with open(tmp, "wb") as f:
            pickle.dump({"model": arrays, "__author__": "recipe"}, f)
    elif fmt == "pth":
        import torch

        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        torch.save({"model": tensors, "iteration": 0}, tmp)
    else:
        raise InputError(f"checkpoint format must be 'pth' or 'pkl', got {fmt!r}")
    os.replace(tmp, path)
    return path
