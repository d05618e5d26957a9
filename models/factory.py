"""Model factory references (``package.module:function``) and their specs, torch kept away.

A user names their model in configs and scenarios as a factory reference: an importable
module and a zero-argument callable in it that returns a ``torch.nn.Module``. Its layout
and ONNX template come from exporting the module once (:mod:`byzedge.models.torch_export`).
That needs torch, which a process that only infers or coordinates must not import (an agent
would keep about 200 MB for good, benchmarks/results/agent.md; the coordinator has no
torch at all). So :func:`factory_spec` exports in-process only where torch is already
loaded (a trainer, a simulator, a test), and otherwise in a short-lived ``spawn``ed child
whose memory goes back to the system when it exits, as the training worker's does.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from byzedge.models.spec import ModelSpec
from byzedge.models.template import read_template

__all__ = ["ModelFactoryError", "factory_spec", "is_factory_reference", "split_reference"]

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})*"
_REFERENCE = re.compile(rf"^({_DOTTED}):({_DOTTED})$")


class ModelFactoryError(ValueError):
    """A factory reference that cannot be imported, called, exported or understood."""


def is_factory_reference(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:function`` (not a registry name)."""
    return _REFERENCE.match(name) is not None


def split_reference(reference: str) -> tuple[str, str]:
    """Split ``package.module:function`` into the module and the attribute path.

    Raises
    ------
    ModelFactoryError
        If ``reference`` is not of that form.
    """
    match = _REFERENCE.match(reference)
    if match is None:
        msg = f"model {reference!r} is neither a registered name nor 'package.module:function'"
        raise ModelFactoryError(msg)
    return match.group(1), match.group(2)


@functools.lru_cache(maxsize=16)
def factory_spec(reference: str) -> ModelSpec:
    """The spec (layout and ONNX template) of the module ``reference`` builds.

    Exports in this process when torch is already imported here, else in a spawned child
    (a few seconds: a fresh interpreter imports torch). Cached per reference for the
    life of the process.

    Raises
    ------
    ModelFactoryError
        If the reference cannot be imported or called, does not return an ``nn.Module``
        with a known input shape, or its export fails.
    """
    split_reference(reference)
    if "torch" in sys.modules:
        from byzedge.models.torch_export import template_from_reference  # noqa: PLC0415

        data = template_from_reference(reference)
    else:
        data = _export_in_child(reference)
    return read_template(data, name=reference)


def _export_in_child(reference: str) -> bytes:
    # spawn: a fresh interpreter (given this one's sys.path), never a fork of a daemon
    # with its broker connection and threads.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            data: bytes = pool.submit(_child_export, reference).result()
        except BrokenProcessPool as exc:
            msg = f"exporting model {reference!r} killed its process ({exc})"
            raise ModelFactoryError(msg) from exc
    return data


def _child_export(reference: str) -> bytes:
    """The child's job: import torch and the user's module, export the template."""
    from byzedge.models.torch_export import template_from_reference  # noqa: PLC0415

    return template_from_reference(reference)
