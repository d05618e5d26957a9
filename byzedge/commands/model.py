"""``byzedge model export | show``: a model's ONNX template and layout.

``export`` runs where torch is installed (a workstation, a device): it imports the user's
factory, exports the module once and writes the template that the coordinator (which never
imports torch) names as ``model_template``. ``show`` prints a model's layout: a registered
name, a factory reference, or a template file; compare its fingerprint across machines.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from byzedge.commands._common import fail

__all__ = ["build_parser", "main"]


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (write e.g. 3,32)") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (positive dimensions)")
    return dims


def build_parser() -> argparse.ArgumentParser:
    """The model subcommands."""
    parser = argparse.ArgumentParser(
        prog="byzedge model", description="A model's ONNX template and parameter layout."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    export = sub.add_parser(
        "export", help="export a factory 'package.module:function' to an ONNX template"
    )
    export.add_argument("model", help="factory reference, e.g. mypkg.models:make_net")
    export.add_argument("--out", type=Path, required=True, help="template file to write")
    export.add_argument(
        "--input-shape",
        type=_input_shape,
        help="one sample's shape, e.g. 3,32 (default: the module's input_shape attribute)",
    )
    export.add_argument(
        "--seed", type=int, default=0, help="torch seed of the initial values (default 0)"
    )
    show = sub.add_parser("show", help="print a model's layout: name, reference or template")
    show.add_argument("model", help="registry name, factory reference, or template file")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge model``.

    Exit codes: 0 ok; 2 usage error, or a model that cannot be imported or exported.
    """
    args = build_parser().parse_args(argv)
    if args.action == "export":
        return _export(args.model, args.out, args.input_shape, args.seed)
    return _show(args.model)


def _export(reference: str, out: Path, input_shape: tuple[int, ...] | None, seed: int) -> int:
    from byzedge.commands._model import describe  # noqa: PLC0415
    from byzedge.models.template import read_template  # noqa: PLC0415

    try:
        from byzedge.models.torch_export import template_from_reference  # noqa: PLC0415
    except ImportError as exc:
        return fail("model", f"export needs torch (pip install 'byzedge[edge]'): {exc}")
    try:
        data = template_from_reference(reference, seed=seed, input_shape=input_shape)
    except ValueError as exc:
        return fail("model", str(exc))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    except OSError as exc:
        return fail("model", f"cannot write {out}: {exc.strerror}")
    print(f"{out}: {describe(read_template(data, name=reference))}")
    return 0


def _show(model: str) -> int:
    from byzedge.commands._model import describe, resolve_model  # noqa: PLC0415
    from byzedge.models import load_template_file  # noqa: PLC0415

    path = Path(model)
    if path.is_file():
        try:
            spec = load_template_file(path)
        except ValueError as exc:
            return fail("model", str(exc))
    else:
        found, reason = resolve_model(model)
        if found is None:
            return fail("model", reason or model)
        spec = found
    print(describe(spec))
    for p in spec.params:
        print(f"  {p.name:<32} {tuple(p.shape)}")
    return 0
