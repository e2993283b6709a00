"""The checks bench/gpu.py runs, one per child process. Each fills its ``Results`` step by
step or raises ``Skip`` with the reason; every step is on disk (``<work>/<name>.json``, written
atomically) as soon as it is known, so a check cut off at its budget keeps what it measured.
Every check but ``dali`` decodes with PyAV and numpy: a broken NVDEC fails one check, not all."""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

import numpy as np

from mirasol_edge.runtime.files import atomic_path

QUESTION = "what colour is the square?"
PINNED = {"decoder": "pyav", "mel": "numpy"}  # every check's decoding but the DALI check's


class Skip(Exception):
    """The check cannot run here; the message says why."""


class Results(dict):
    """A check's results so far: written to its file after every step, marked ``running``."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.save("running")

    def __setitem__(self, key: str, value) -> None:
        super().__setitem__(key, value)
        self.save("running")

    def update(self, *args, **kwargs) -> None:
        super().update(*args, **kwargs)
        self.save("running")

    def save(self, status: str, **extra) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"status": status, **extra, "results": dict(self)}, indent=1, default=str))


def run(name: str, work: Path) -> None:
    out = Results(work / f"{name}.json")
    try:
        CHECKS[name](work, out)
        summary = out.pop("summary", "")
        out.save("ok", summary=summary)
    except Skip as exc:
        out.save("skipped", reason=str(exc))
    except Exception as exc:  # recorded, and the run goes on
        out.save("failed", reason=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-4000:])


def _gpu() -> None:
    from mirasol_edge.runtime.cuda import gpu_problem

    problem = gpu_problem()
    if problem:
        raise Skip(f"no GPU: {problem}")


def _module(name: str, why: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Skip(f"{name} is not installed ({why}): {exc}") from None


def _stats(values) -> dict:
    from mirasol_edge.measure.stats import stats

    return stats(list(values))


def _chunks(shape, mel_shape, n=8, seed=0):
    from mirasol_edge.runtime.results import RawChunk

    rng = np.random.default_rng(seed)
    return [RawChunk(rng.integers(0, 255, shape, dtype=np.uint8),
                     rng.normal(-40, 15, mel_shape).astype(np.float32) if mel_shape else None) for _ in range(n)]


# ---- 1. machine -----------------------------------------------------------------------
def machine(work: Path, out: Results) -> None:
    from mirasol_edge.runtime import machine as host
    from mirasol_edge.runtime.cuda import _cudart, check, compute_capability, device_name, gpu_problem

    info = host.describe()
    problem = gpu_problem()
    info["cuda"] = {"problem": problem}
    if problem is None:
        rt = _cudart()
        info["cuda"].update(name=device_name(), compute_capability=compute_capability(),
                            driver=check(rt.cudaDriverGetVersion()), runtime=check(rt.cudaRuntimeGetVersion()))
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    info["summary"] = f"{info['cuda'].get('name', 'no GPU')} ({info['cuda'].get('compute_capability', '-')})"
    out.update(info)


# ---- 2. PyTorch on CUDA ----------------------------------------------------------------------
def _torch_model(preset: str):
    import torch

    from mirasol_edge.assets import BUNDLED_CHECKPOINT
    from mirasol_edge.runtime.config import MirasolConfig
    from mirasol_edge.toolkit import Mirasol

    if preset == "tiny":
        return Mirasol.load(BUNDLED_CHECKPOINT).to("cuda")
    torch.manual_seed(0)
    with torch.device("cuda"):  # random weights made on the GPU: 3B parameters in seconds
        return Mirasol(MirasolConfig.preset(preset)).eval()


def _torch_stream(model, precision: str, pushes: int) -> dict:
    import torch

    from mirasol_edge.runtime.stream import MirasolEngines
    from mirasol_edge.toolkit.reference import ReferenceDir, TorchBackend

    ref = ReferenceDir.of(model, 48, 16)
    engines = MirasolEngines(ref, TorchBackend(ref, "cuda", model=model, precision=precision))
    chunks = _chunks(engines.video_shape, engines.mel_shape)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    stream = engines.stream()
    opened = torch.cuda.memory_allocated()
    for chunk in chunks[:5]:
        stream.push(chunk)
    times, memory = [], []
    for i in range(pushes):
        start = time.perf_counter()
        stream.push(chunks[i % len(chunks)])  # the outputs come to the host: the push is complete
        times.append((time.perf_counter() - start) * 1e3)
        if i % max(1, pushes // 10) == 0 or i == pushes - 1:
            memory.append(torch.cuda.memory_allocated())
    asks = [stream.ask(QUESTION) for _ in range(3)]
    tenth = max(1, pushes // 10)
    return {"precision": precision, "pushes": pushes, "push_ms": _stats(times),
            "push_p50_first_tenth_ms": float(np.median(times[:tenth])),
            "push_p50_last_tenth_ms": float(np.median(times[-tenth:])),
            "ask_total_ms": _stats(a.total_ms for a in asks), "first_token_ms": _stats(a.first_token_ms for a in asks),
            "device_mib_per_stream": round((opened - before) / 2**20, 3),
            "state_mib": round(sum(a.nbytes for a in stream.state().values()) / 2**20, 3),
            "device_mib_growth_during_run": round((memory[-1] - memory[0]) / 2**20, 3),
            "device_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def torch_cuda(work: Path, results: Results) -> None:
    torch = _module("torch", "the PyTorch reference")
    if not torch.cuda.is_available():
        raise Skip("this torch sees no CUDA GPU")
    for preset, precision, pushes in (("tiny", "fp32", 1000), ("edge", "fp32", 200), ("edge", "fp16", 200),
                                      ("mirasol3b", "fp16", 40)):
        model = _torch_model(preset)
        results[f"{preset}-{precision}"] = _torch_stream(model, precision, pushes)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tiny = results["tiny-fp32"]
    results["summary"] = (f"tiny push p50 {tiny['push_ms']['p50']:.2f} ms over 1,000 chunks (first/last tenth "
                          f"{tiny['push_p50_first_tenth_ms']:.2f}/{tiny['push_p50_last_tenth_ms']:.2f}, growth "
                          f"{tiny['device_mib_growth_during_run']} MiB); mirasol3b fp16 push p50 "
                          f"{results['mirasol3b-fp16']['push_ms']['p50']:.1f} ms")


# ---- 3. TensorRT-RTX --------------------------------------------------------------------------
def _build(work: Path, name: str, recipe: str, overrides=()) -> Path:
    from mirasol_edge.assets import BUNDLED_CHECKPOINT
    from mirasol_edge.toolkit.build import build
    from mirasol_edge.toolkit.recipe import load_recipe

    out = work / name
    build(load_recipe(recipe, list(overrides)), out, checkpoint=BUNDLED_CHECKPOINT)
    return out


def _answers(engine_dir: Path, **options) -> dict:
    from mirasol_edge.assets import SAMPLE_CLIP, SAMPLE_QUESTIONS
    from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
    from mirasol_edge.runtime.stream import MirasolStream

    qa = json.loads(SAMPLE_QUESTIONS.read_text())["qa"]
    with MirasolStream.open(engine_dir, **options) as stream:
        spec = ChunkSpec.from_config(stream.engines.dir.config)
        outputs = [stream.push(c).outputs for c in chunks(SAMPLE_CLIP, spec, **PINNED)]
        answers = {q["question"]: stream.ask(q["question"]).text for q in qa}
    return {"outputs": outputs, "answers": answers, "right": sum(answers[q["question"]] == q["answer"] for q in qa)}


def _push_timing(engine_dir: Path, rounds: int = 200, **options) -> dict:
    from mirasol_edge.runtime.stream import MirasolStream

    with MirasolStream.open(engine_dir, **options) as stream:
        chunks = _chunks(stream.engines.video_shape, stream.engines.mel_shape)
        for c in chunks:
            stream.push(c)
        results = [stream.push(chunks[i % len(chunks)]) for i in range(rounds)]
        asks = [stream.ask(QUESTION) for _ in range(5)]
        graphs = stream.engines.backend.describe().get("cuda_graphs")
    return {"push_ms": _stats(r.timings.total_ms for r in results),
            "encode_ms": _stats(r.timings.encode_ms for r in results),
            "ar_ms": _stats(r.timings.ar_ms for r in results), "ask_ms": _stats(a.total_ms for a in asks),
            "first_token_ms": _stats(a.first_token_ms for a in asks), "cuda_graphs": graphs}


def tensorrt_rtx(work: Path, results: Results) -> None:
    trt = _module("tensorrt_rtx", "carry its wheels: ../shared/gpu/prepare rtx")
    _gpu()
    from mirasol_edge.runtime import cuda
    from mirasol_edge.runtime.stream import MirasolStream

    results.update(gpu_compute_capability=cuda.compute_capability(), tensorrt_rtx=trt.__version__)
    cpu = _build(work, "tiny-cpu", "cpu")
    ci = _build(work, "tiny-rtx-ci", "rtx")  # what CI builds: SM 8.6 / 8.9 / 12.0
    try:
        MirasolStream.open(ci).close()
        results["ci_engines"] = "loaded"
    except Exception as exc:
        results["ci_engines"] = f"refused by mirasol: {exc}"
    results["ci_engines_raw"] = _raw_load(trt, ci / "ar_step.plan")
    start = time.perf_counter()
    current = _build(work, "tiny-rtx-current", "rtx", ['target.compute_capabilities=["current"]'])
    results["current_build_s"] = round(time.perf_counter() - start, 1)
    rtx, ort = _answers(current), _answers(cpu)
    rel = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(rtx["outputs"], ort["outputs"]))
    results["vs_onnxruntime_cpu"] = {"max_rel_error": rel, "answers_rtx": rtx["answers"], "answers_ort": ort["answers"],
                                     "same_answers": rtx["answers"] == ort["answers"], "right_rtx": rtx["right"]}
    results["cuda_graphs_on"] = _push_timing(current)
    results["cuda_graphs_off"] = _push_timing(current, cuda_graphs=False)
    results["host_copies_per_push"] = _count_copies(current)
    # The runtime cache: JIT kernels compiled once, then read from disk. Every open above wrote the
    # default cache file on close, so the cold open gets a fresh path of its own.
    cache = work / "runtime-cache-cold-then-warm.cache"
    cache.unlink(missing_ok=True)
    for label in ("cold", "warm"):
        start = time.perf_counter()
        MirasolStream.open(current, runtime_cache=cache).close()
        results[f"open_{label}_s"] = round(time.perf_counter() - start, 2)
    results["summary"] = (f"CI engines: {results['ci_engines'][:60]}; current-GPU engines answer "
                          f"{rtx['right']}/6, same as ORT: {rtx['answers'] == ort['answers']}; push p50 "
                          f"{results['cuda_graphs_on']['push_ms']['p50']:.3f} ms (graphs) vs "
                          f"{results['cuda_graphs_off']['push_ms']['p50']:.3f} ms")


def _raw_load(trt, plan: Path) -> str:
    """What TensorRT-RTX itself says of a plan on this GPU, past mirasol's own target check."""
    messages = []
    from mirasol_edge.runtime.trt import trt_logger

    runtime = trt.Runtime(trt_logger(trt, messages))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    if engine is None:
        return "deserialize failed: " + "; ".join(messages[-3:])
    context = engine.create_execution_context()
    return "context created" if context is not None else "context failed: " + "; ".join(messages[-3:])


def _count_copies(engine_dir: Path) -> dict:
    from mirasol_edge.runtime import cuda
    from mirasol_edge.runtime.stream import MirasolStream

    counts = {"upload": 0, "download": 0}
    up, down = cuda.DeviceBuffer.upload, cuda.DeviceBuffer.download

    def counted(kind, fn):
        def wrapper(*args):
            counts[kind] += 1
            return fn(*args)
        return wrapper

    with MirasolStream.open(engine_dir) as stream:
        chunks = _chunks(stream.engines.video_shape, stream.engines.mel_shape)
        stream.push(chunks[0])
        cuda.DeviceBuffer.upload, cuda.DeviceBuffer.download = counted("upload", up), counted("download", down)
        try:
            for c in chunks:
                stream.push(c)
        finally:
            cuda.DeviceBuffer.upload, cuda.DeviceBuffer.download = up, down
    return {k: v / len(chunks) for k, v in counts.items()}


# ---- 4. DALI NVDEC ------------------------------------------------------------------------------
def dali(work: Path, results: Results) -> None:
    _module("nvidia.dali", "carry its wheels: ../shared/gpu/prepare dali")
    _module("av", "carry its wheels: ../shared/gpu/prepare av")
    _gpu()
    from mirasol_edge.runtime.config import MirasolConfig
    from mirasol_edge.runtime.decode.chunks import ChunkSpec, chunks
    from mirasol_edge.runtime.decode.dali import LogMel
    from mirasol_edge.runtime.decode.mel import log_mel

    spec = ChunkSpec.from_config(MirasolConfig.preset("edge"))
    from decode import encode  # bench/decode.py's clips: PyAV's encoders, moving content, audio

    for codec in ("h264", "hevc"):
        for size in ((1280, 720), (1920, 1080)):
            label = f"{codec}-{size[1]}p"
            try:
                clip = encode(work / label, codec, 4.0, size, 30)
            except Exception as exc:  # this PyAV may lack the encoder
                results[label] = {"skipped": f"PyAV cannot encode {codec}: {exc}"}
                continue
            row = {}
            for decoder in ("dali-gpu", "pyav"):
                start = time.perf_counter()
                got = list(chunks(clip, spec, decoder=decoder, mel="numpy"))
                wall = time.perf_counter() - start
                row[decoder] = {"chunks": len(got), "source_fps": round(4.0 * 30 / wall, 1),
                                "realtime": round(4.0 / wall, 2), "decoder": sorted({c.decoder for c in got})}
            row["gpu_over_cpu"] = round(row["dali-gpu"]["source_fps"] / row["pyav"]["source_fps"], 2)
            results[label] = row
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * 523 * np.arange(32000) / 16000) + 0.05 * rng.standard_normal(32000)).astype(np.float32)
    cfg = MirasolConfig.preset("edge")
    gpu_mel = LogMel(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, device="gpu")(audio)
    cpu_mel = log_mel(audio, cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
    results["gpu_mel_max_abs_db"] = float(np.abs(gpu_mel - cpu_mel[: len(gpu_mel)]).max())
    done = {k: v["gpu_over_cpu"] for k, v in results.items() if isinstance(v, dict) and "gpu_over_cpu" in v}
    results["summary"] = f"NVDEC over PyAV (source fps): {done}; GPU mel within {results['gpu_mel_max_abs_db']:.1e} dB"


# ---- 5. ONNX Runtime's CUDA provider ------------------------------------------------------------
def ort_cuda(work: Path, results: Results) -> None:
    ort = _module("onnxruntime", "the CPU backend")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"onnxruntime {ort.__version__} has no CUDA provider (carry onnxruntime-gpu: prepare ortgpu)")
    _gpu()
    cpu = work / "tiny-cpu"
    if not cpu.is_dir():
        cpu = _build(work, "tiny-cpu", "cpu")
    gpu, host = _answers(cpu, backend="onnxruntime", device="cuda"), _answers(cpu)
    results.update(same_answers=gpu["answers"] == host["answers"], right=gpu["right"])
    timing = results["timing"] = _push_timing(cpu, backend="onnxruntime", device="cuda")
    results["summary"] = (f"answers {gpu['right']}/6, same as CPU: {gpu['answers'] == host['answers']}; "
                          f"push p50 {timing['push_ms']['p50']:.2f} ms")


# ---- 6. The roofline on the GPU ---------------------------------------------------------------------
def roofline(work: Path, results: Results) -> None:
    torch = _module("torch", "the PyTorch reference")
    if not torch.cuda.is_available():
        raise Skip("this torch sees no CUDA GPU")
    from torch.utils.flop_counter import FlopCounterMode

    from mirasol_edge.measure.floor import measure_ceilings
    from mirasol_edge.toolkit.export import component_spec

    # Each precision against its own ceiling: fp32 matmuls do not run at the fp16 tensor-core peak.
    ceilings = {p: measure_ceilings("cuda", dtype=p) for p in ("fp32", "fp16")}
    results["ceilings"] = {p: {"tflops": round(c.flops_per_s / 1e12, 1), "tb_per_s": round(c.bytes_per_s / 1e12, 2),
                               "how": c.how} for p, c in ceilings.items()}
    model = _torch_model("edge")
    state = model.init_state(1)
    for name in ("chunk_encoder", "ar_step"):
        spec = component_spec(model, name, 1, state)
        inputs = [t.to("cuda") for t in spec.inputs.values()]
        for precision in ("fp32", "fp16"):
            cast = torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16")
            with torch.no_grad(), cast:
                with FlopCounterMode(display=False) as counter:
                    spec.module(*inputs)
                for _ in range(5):
                    spec.module(*inputs)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                times = []
                for _ in range(50):
                    start.record()
                    spec.module(*inputs)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end))
            flops = counter.get_total_flops()
            # Autocast keeps the weights fp32 and recasts them on every call: each is read (4 B),
            # written as fp16 (2 B) and read again by the matmul (2 B).
            weight_bytes = sum(p.numel() for p in spec.module.parameters()) * (8 if precision == "fp16" else 4)
            ceiling = ceilings[precision]
            floor_ms = max(flops / ceiling.flops_per_s, weight_bytes / ceiling.bytes_per_s) * 1e3
            p50 = float(np.median(times))
            results[f"{name}-{precision}"] = {"gflops": round(flops / 1e9, 2), "weight_mib": round(weight_bytes / 2**20, 1),
                                              "p50_ms": round(p50, 3), "floor_ms": round(floor_ms, 4),
                                              "x_floor": round(p50 / floor_ms, 1)}
    results["summary"] = ", ".join(f"{k} {v['x_floor']}x floor" for k, v in results.items() if "x_floor" in v)


# ---- 7. the requires_cuda tests -------------------------------------------------------------------
def pytest(work: Path, results: Results) -> None:
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    _gpu()
    root = Path(__file__).resolve().parents[1]
    junit = work / "junit.xml"
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "requires_cuda", "-p", "no:cacheprovider",
                            f"--junitxml={junit}", "tests"], cwd=root, capture_output=True, text=True, timeout=85)
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        detail = next((c.get("message", "") for c in case if c.tag in ("failure", "error", "skipped")), "")
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome, "detail": detail[:300]})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failure", "error", "skipped")}
    results.update(cases=cases, counts=counts, tail=child.stdout[-1500:],
                   summary=", ".join(f"{v} {k}" for k, v in counts.items()))


def selftest(work: Path, results: Results) -> None:
    """Test-only (MIRASOL_GPU_SELFTEST=1): one step, then a sleep, so a test can cut the run off."""
    results["before_sleep"] = True
    time.sleep(float(os.environ.get("MIRASOL_GPU_SELFTEST_SLEEP", "60")))
    results["after_sleep"] = True


CHECKS = {"machine": machine, "torch_cuda": torch_cuda, "tensorrt_rtx": tensorrt_rtx, "dali": dali,
          "ort_cuda": ort_cuda, "roofline": roofline, "pytest": pytest, "selftest": selftest}
