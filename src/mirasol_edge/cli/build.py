"""``mirasol-build``: a checkpoint (or preset) and a recipe -> engines and a manifest.

Exit codes: 0 built; 2 bad usage or recipe; 3 checkpoint; 4 export or parity; 5 engine
build; 6 output directory; 7 calibration or quantization (too little media, or the quantized
model misses the recipe's accuracy thresholds: the report is in the message).
"""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from mirasol_edge.assets import BUNDLED_CHECKPOINT
from mirasol_edge.console import err, fail


def _summary(manifest: dict, out: str, seconds: float, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({
            "out": out, "seconds": round(seconds, 2), "backend": manifest["backend"],
            "components": {n: {k: c.get(k) for k in ("precision", "engine", "engine_bytes", "parity", "reused",
                                                     "quantization")}
                           for n, c in manifest["components"].items()},
            "quantization": manifest.get("quantization"),
        }))
        return
    table = Table(title=f"{out}  ({manifest['backend']['name']} {manifest['backend']['version'] or ''})")
    for col in ("component", "precision", "engine", "MiB", "rel. error vs PyTorch", "export s", "build s"):
        table.add_column(col, justify="right" if col not in ("component", "engine") else "left")
    for name, c in manifest["components"].items():
        size = f"{c['engine_bytes'] / 2**20:.2f}" if c.get("engine_bytes") else "-"
        table.add_row(name, c["precision"], c.get("engine") or "(bundle: not built)", size,
                      f"{c['parity']['max_rel_error']:.1e}", f"{c.get('export_seconds', 0):.1f}",
                      "reused" if c.get("reused") else f"{c.get('build_seconds', 0):.1f}")
    Console().print(table)
    q = manifest.get("quantization")
    if q and "exact_match" in q:
        kept = {n: c["quantization"]["kept_fp32"] for n, c in manifest["components"].items()
                if c.get("quantization", {}).get("kept_fp32")}
        Console().print(f"answers on {q['eval_clips']} demo-task clips: fp32 {q['exact_match']['fp32']:.1%}, "
                        f"quantized {q['exact_match']['quantized']:.1%}"
                        + (f"; kept in fp32: {kept}" if kept else ""), highlight=False)
    Console().print(f"built in {seconds:.1f}s -> {out}/manifest.json")


def _progress(as_json: bool):
    return (lambda msg: None) if as_json else (lambda msg: err.print(f"[dim]·[/] {msg}", highlight=False))


def quantization_hooks() -> dict:
    """What a build needs for quantized components: calibration, and the demo task's answer check."""
    from mirasol_edge.demo.hooks import answer_check, quantizer

    return {"quantizer": quantizer(), "answer_check": answer_check}


def _run_build(recipe: str, overrides: tuple[str, ...], preset: str | None, checkpoint: str | None, out: str,
               stage: str, as_json: bool) -> None:
    from mirasol_edge.toolkit.build import build
    from mirasol_edge.toolkit.recipe import load_recipe

    try:
        if preset is not None and checkpoint is not None:
            raise click.UsageError("give one of --preset or --checkpoint, not both")
        if preset is None and checkpoint is None:
            checkpoint = str(BUNDLED_CHECKPOINT)  # the trained tiny model that ships in the package
        start = time.perf_counter()
        manifest = build(load_recipe(recipe, list(overrides)), out, checkpoint=checkpoint, preset=preset,
                         stage=stage, progress=_progress(as_json), **quantization_hooks())
        _summary(manifest, out, time.perf_counter() - start, as_json)
    except click.UsageError:
        raise
    except Exception as exc:
        fail("mirasol-build", exc)


def _build_options(fn):
    for option in reversed([
        click.option("--recipe", "-r", required=True, help="recipe name (cpu, cpu-fast, rtx, h100, l4, agx-orin, orin-nx, "
                     "orin-nano, thor) or path to a .toml"),
        click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="override a recipe value, e.g. --set build.batch=4 --set precision.ar_step=fp16"),
        click.option("--preset", type=click.Choice(["tiny", "edge", "mirasol3b"]),
                     help="build a preset's architecture with random weights (for sizing and benchmarks)"),
        click.option("--checkpoint", "-c", type=click.Path(dir_okay=False),
                     help="a Mirasol safetensors checkpoint (default: the bundled tiny model)"),
        click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="output directory"),
        click.option("--json", "as_json", is_flag=True, help="print a JSON summary instead of a table"),
    ]):
        fn = option(fn)
    return fn


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--recipe", "-r",
              help="recipe name (cpu, cpu-fast, rtx, h100, l4, agx-orin, orin-nx, orin-nano, thor) or a .toml path")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="override a recipe value, e.g. --set build.batch=4")
@click.option("--preset", type=click.Choice(["tiny", "edge", "mirasol3b"]),
              help="build a preset's architecture with random weights")
@click.option("--checkpoint", "-c", type=click.Path(dir_okay=False),
              help="a Mirasol safetensors checkpoint (default: the bundled tiny model)")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="output directory")
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary instead of a table")
@click.pass_context
def main(ctx, recipe, overrides, preset, checkpoint, out, as_json):
    """Export each Mirasol component to ONNX, check it against PyTorch, set its precision,
    and build the recipe's engines (TensorRT, TensorRT-RTX or ONNX Runtime) into OUT with
    a manifest.json.

    \b
    mirasol-build --recipe cpu --preset tiny --out engines/tiny-cpu
    mirasol-build --recipe rtx --checkpoint model.safetensors --out engines/rtx
    mirasol-build export --recipe orin-nano --checkpoint m.safetensors --out bundle   # on a workstation
    mirasol-build engine bundle                                                      # on the Jetson
    """
    if ctx.invoked_subcommand is not None:
        return
    if not recipe or not out:
        raise click.UsageError("--recipe and --out are required")
    _run_build(recipe, overrides, preset, checkpoint, out, "all", as_json)


@main.command("export")
@_build_options
def export_bundle(recipe, overrides, preset, checkpoint, out, as_json):
    """Write a bundle (ONNX per component, recipe, manifest) to compile on the target."""
    _run_build(recipe, overrides, preset, checkpoint, out, "export", as_json)


@main.command("engine")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print a JSON summary instead of a table")
def engine(bundle, as_json):
    """Compile the engines of BUNDLE here (TensorRT engines are not portable between GPUs)."""
    from mirasol_edge.toolkit.engines import build_engines_from_bundle

    try:
        start = time.perf_counter()
        manifest = build_engines_from_bundle(bundle, progress=_progress(as_json))
        _summary(manifest, bundle, time.perf_counter() - start, as_json)
    except Exception as exc:
        fail("mirasol-build", exc)


def _bounded(ctx, param, value):
    """A ``triton`` option within its bounds (serve.repository.LIMITS), or a usage error naming it."""
    from mirasol_edge.errors import UsageError
    from mirasol_edge.serve.repository import LIMITS, check_limit

    low, high = LIMITS[param.name]
    try:
        check_limit(param.name, value, low, high, whole=param.name != "idle_seconds")
    except UsageError as exc:
        raise click.BadParameter(str(exc).split(" ", 1)[1]) from None  # click names the option itself
    return value


@main.command("triton")
@click.argument("engines", type=click.Path(file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="the model repository to write")
@click.option("--twin", is_flag=True, help="serve the engines' ONNX from Python-backend models (CPU, no NVIDIA container)")
@click.option("--max-streams", type=int, default=64, show_default=True, callback=_bounded,
              help="streams the server keeps open at once (1 to 4096); one more is refused (ServerFull)")
@click.option("--max-batch", type=int, default=16, show_default=True, callback=_bounded,
              help="requests from different streams run together (1 to 1024)")
@click.option("--idle-seconds", type=float, default=60.0, show_default=True, callback=_bounded,
              help="a stream with no request for this long is released (0.1 to 86400)")
@click.option("--kind", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
              help="where the engine models run (auto: gpu for TensorRT engines)")
@click.option("--access", type=click.Path(dir_okay=False),
              help="ACCESS.toml: each client's token and the stream IDs it may open (see the README's Security); "
                   "without it the server is single-tenant: any client may use any stream")
def triton(engines, out, twin, max_streams, max_batch, idle_seconds, kind, access):
    """Write a Triton Inference Server model repository for ENGINES (see the README's "Serving many cameras")."""
    from mirasol_edge.serve.repository import ServeOptions, write_repository

    try:
        options = ServeOptions(max_streams=max_streams, max_batch=max_batch, idle_seconds=idle_seconds, kind=kind)
        repo = write_repository(engines, out, options, twin=twin, access=access)
    except Exception as exc:
        fail("mirasol-build triton", exc)
    models = sorted(d.name for d in repo.iterdir() if (d / "config.pbtxt").is_file())
    click.echo(f"wrote {repo}: models {', '.join(models)}" + (" (CPU twin)" if twin else ""))
    click.echo(f"serve it: tritonserver --model-repository={repo.resolve()}; "
               "stream to it: mirasol-run SOURCE --server HOST:8001" + (" --token-file F" if access else ""))
    if not access:
        click.echo("no --access: a single-tenant lab setup, any client that reaches the server may open any stream",
                   err=True)


if __name__ == "__main__":
    main()
