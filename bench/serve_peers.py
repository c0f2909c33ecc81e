"""The peer servers that bench/serve_load.py measures modelyard's server against, one subcommand each.

``fastapi``        A plain FastAPI + PyTorch fp32 endpoint written the way a tutorial writes it: a sync ``def``
                   endpoint (FastAPI runs it in its thread pool), a pydantic body, ``model(x)`` once per request,
                   JSON lists in and out, one uvicorn worker. It serves the PyTorch fp32 baseline, not the
                   registry champion: for the digits CNN the baseline's safetensors weights in the architecture
                   from ``modelyard.zoo.nets``; for MiniLM the sentence-transformers folder and its ``encode``.
                   Runs in modelyard's venv (it needs torch).
``fastapi-async``  A hand-written async FastAPI + ONNX Runtime endpoint over an ONNX file (serve_load.py gives it
                   the registry champion's): an ``async def`` endpoint that parses the JSON body itself and runs
                   ``session.run`` through ``run_in_executor`` on one inference thread (so HTTP work overlaps
                   inference without two runs fighting over the cores), one request per run, one uvicorn worker.
                   Runs in modelyard's venv (onnxruntime, tokenizers, FastAPI; no torch, no modelyard import).
``litserve``       LitServe serving an ONNX file with ONNX Runtime and LitServe's own dynamic batching
                   (``LitAPI(max_batch_size=..., batch_timeout=...)``). Runs in bench/.venv-litserve (created by
                   bench/setup_litserve.sh); it imports neither modelyard nor torch.
``kserve``         KServe's Python model server without Kubernetes: a ``kserve.Model`` subclass whose ``load``
                   opens the ONNX file with ONNX Runtime and whose sync ``predict`` takes an OIP v2 ``InferRequest``
                   and returns an ``InferResponse`` (one request per run; KServe's Python server does not batch),
                   started with ``ModelServer(http_port=..., enable_grpc=False).start([model])``. KServe hard-codes
                   uvicorn's host to 0.0.0.0 (and gRPC to [::]); here gRPC is off and the REST server's uvicorn
                   config is set to 127.0.0.1 before it starts. Its other settings are KServe's defaults (one
                   worker, a latency log line per request). Runs in bench/.venv-kserve (bench/setup_kserve.sh).

All bind 127.0.0.1 only. ``fastapi``, ``fastapi-async`` and ``litserve`` answer ``GET /health`` with 200 once
the model is loaded and take the same bodies on ``POST /predict``:

- digits: ``{"inputs": [[64 floats]]}`` (one or more flattened 8x8 images) ->
  ``{"probabilities": [[10 floats], ...]}`` (softmax of the logits);
- text:   ``{"text": "a sentence"}`` -> ``{"embedding": [384 floats]}``.

``kserve`` speaks OIP v2 JSON like modelyard: ``GET /v2/health/ready``, ``POST /v2/models/NAME/infer`` with one
FP32 input (digits, shape [n, 1, 8, 8]) or one BYTES input (text, shape [n]), answering one output named
``probabilities`` or ``embedding``.

Usage:
  .venv/bin/python bench/serve_peers.py fastapi --kind digits --weights FILE.safetensors --port 8001
  .venv/bin/python bench/serve_peers.py fastapi --kind text --model-dir DIR --port 8001
  .venv/bin/python bench/serve_peers.py fastapi-async --kind text --onnx FILE --tokenizer DIR --port 8001
  bench/.venv-litserve/bin/python bench/serve_peers.py litserve --kind digits --onnx FILE --port 8002
  bench/.venv-kserve/bin/python bench/serve_peers.py kserve --kind digits --onnx FILE --name NAME --port 8003
"""

import argparse
import asyncio
import json
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MAX_TOKENS = 128  # the MiniLM demo's max_length, so every server truncates the same way


# ---------------------------------------------------------------------------------------------------
# (a) the tutorial endpoint


def fastapi_digits_app(weights: Path) -> Any:
    """FastAPI app: the digits CNN in PyTorch fp32, one ``model(x)`` per request."""
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from safetensors.torch import load_file

    from modelyard.zoo.nets import digits_cnn

    model = digits_cnn()
    model.load_state_dict(load_file(str(weights)))
    model.eval()

    class Images(BaseModel):
        inputs: list[list[float]]

    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/predict")
    def predict(body: Images) -> dict[str, list[list[float]]]:
        x = torch.tensor(body.inputs, dtype=torch.float32).reshape(-1, 1, 8, 8)
        with torch.no_grad():
            logits = model(x)
        return {"probabilities": torch.softmax(logits, dim=1).tolist()}

    return app


def fastapi_text_app(model_dir: Path) -> Any:
    """FastAPI app: a sentence-transformers model in PyTorch fp32, one ``model.encode(text)`` per request."""
    from fastapi import FastAPI
    from pydantic import BaseModel
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = MAX_TOKENS

    class Sentence(BaseModel):
        text: str

    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/predict")
    def predict(body: Sentence) -> dict[str, list[float]]:
        return {"embedding": model.encode(body.text).tolist()}

    return app


def run_fastapi(args: argparse.Namespace) -> None:
    import uvicorn

    if args.kind == "digits":
        if args.weights is None:
            raise SystemExit("error: fastapi --kind digits needs --weights FILE.safetensors")
        app = fastapi_digits_app(args.weights)
    else:
        if args.model_dir is None:
            raise SystemExit("error: fastapi --kind text needs --model-dir (a sentence-transformers folder)")
        app = fastapi_text_app(args.model_dir)
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------------
# the ONNX file under ONNX Runtime, shared by the fastapi-async, litserve and kserve peers


def make_session(onnx_file: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])


def softmax(logits: Any) -> Any:
    import numpy as np

    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class OnnxModel:
    """The digits classifier (softmax over the logits) or the text embedder (the file's first output), run on
    a batch: images of shape (n, 1, 8, 8), or a list of sentences tokenized here like modelyard does."""

    def __init__(self, onnx_file: Path, kind: str, tokenizer_dir: Path | None, threads: int) -> None:
        if kind == "text" and tokenizer_dir is None:
            raise SystemExit("error: --kind text needs --tokenizer DIR (the folder with tokenizer.json)")
        self.kind = kind
        self.sess = make_session(onnx_file, threads)
        self.input_names = [i.name for i in self.sess.get_inputs()]
        self.output_name = self.sess.get_outputs()[0].name
        if kind == "text":
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_file(str(Path(str(tokenizer_dir)) / "tokenizer.json"))
            self.tok.enable_truncation(max_length=MAX_TOKENS)
            self.tok.enable_padding()

    def run(self, x: Any) -> Any:
        import numpy as np

        if self.kind == "digits":
            (logits,) = self.sess.run([self.output_name], {self.input_names[0]: x})
            return softmax(logits)
        enc = self.tok.encode_batch(x if isinstance(x, list) else [x])
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        (out,) = self.sess.run([self.output_name], {k: feeds[k] for k in self.input_names})
        return out

    def decode(self, body: dict[str, Any]) -> Any:
        """A ``/predict`` body -> the model's batch input."""
        import numpy as np

        if self.kind == "text":
            return [str(body["text"])]
        return np.asarray(body["inputs"], dtype=np.float32).reshape(-1, 1, 8, 8)


def _onnx_model(args: argparse.Namespace) -> OnnxModel:
    return OnnxModel(args.onnx, args.kind, args.tokenizer, args.threads)


# ---------------------------------------------------------------------------------------------------
# the hand-written async FastAPI + ONNX Runtime endpoint


def fastapi_async_app(model: OnnxModel) -> Any:
    """FastAPI app: ``async def`` endpoint, JSON parsed by hand, ``session.run`` on one inference thread."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        try:
            x = model.decode(json.loads(await request.body()))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad request body: {exc}"}, status_code=400)
        out = await asyncio.get_running_loop().run_in_executor(inference, model.run, x)
        if model.kind == "text":
            return JSONResponse({"embedding": out[0].tolist()})
        return JSONResponse({"probabilities": out.tolist()})

    return app


def run_fastapi_async(args: argparse.Namespace) -> None:
    import uvicorn

    app = fastapi_async_app(_onnx_model(args))
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", access_log=False)


# ---------------------------------------------------------------------------------------------------
# LitServe over ONNX Runtime


def _litapi_base() -> type:
    """LitServe's ``LitAPI`` where LitServe is installed (its venv), else ``object`` (the other venvs, where
    other subcommands run). LitServe pickles the API into its worker processes, so the class must live at
    module level."""
    try:
        import litserve
    except ImportError:
        return object
    return litserve.LitAPI


class OnnxLitAPI(_litapi_base()):  # type: ignore[misc]
    """``OnnxModel`` batched by LitServe."""

    def __init__(
        self, *, onnx_file: Path, kind: str, tokenizer_dir: Path | None, threads: int, **batching: Any
    ):
        super().__init__(**batching)
        self.onnx_file, self.kind, self.tokenizer_dir, self.threads = onnx_file, kind, tokenizer_dir, threads

    def setup(self, device: str) -> None:
        self.model = OnnxModel(self.onnx_file, self.kind, self.tokenizer_dir, self.threads)

    def decode_request(self, request: dict[str, Any]) -> Any:
        x = self.model.decode(request)
        return x[0] if self.kind == "text" else x

    def batch(self, inputs: list[Any]) -> Any:
        import numpy as np

        return list(inputs) if self.kind == "text" else np.concatenate(inputs)

    def predict(self, x: Any) -> Any:
        return self.model.run(x)

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any) -> dict[str, Any]:
        if self.kind == "text":
            return {"embedding": (output[0] if output.ndim == 2 else output).tolist()}
        return {"probabilities": (output if output.ndim == 2 else output[None, :]).tolist()}


def run_litserve(args: argparse.Namespace) -> None:
    import litserve as ls

    if args.kind == "text" and args.tokenizer is None:
        raise SystemExit("error: litserve --kind text needs --tokenizer DIR (the folder with tokenizer.json)")
    api = OnnxLitAPI(
        onnx_file=args.onnx,
        kind=args.kind,
        tokenizer_dir=args.tokenizer,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout_s,
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=args.timeout_s)
    server.run(host=HOST, port=args.port, generate_client_file=False, log_level="warning")


# ---------------------------------------------------------------------------------------------------
# KServe's Python model server over ONNX Runtime


def run_kserve(args: argparse.Namespace) -> None:
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv at import; ours are not its options
    import kserve
    import kserve.model_server
    import numpy as np
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.rest.server import RESTServer

    class LoopbackRESTServer(RESTServer):  # type: ignore[misc]
        """KServe's REST server with uvicorn bound to 127.0.0.1 (KServe hard-codes 0.0.0.0)."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.config.host = HOST

    kserve.model_server.RESTServer = LoopbackRESTServer
    wanted = "embedding" if args.kind == "text" else "probabilities"

    class OnnxKServeModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.ready = False

        def load(self) -> bool:
            self.onnx = _onnx_model(args)
            self.ready = True
            return True

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            x = payload.inputs[0].as_numpy()
            if args.kind == "text":
                x = [t.decode() if isinstance(t, bytes) else str(t) for t in x.reshape(-1)]
            else:
                x = np.asarray(x, dtype=np.float32).reshape(-1, 1, 8, 8)
            out = np.ascontiguousarray(self.onnx.run(x), dtype=np.float32)
            result = InferOutput(name=wanted, shape=list(out.shape), datatype="FP32")
            result.set_data_from_numpy(out, binary_data=False)
            return InferResponse(
                response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=[result]
            )

    model = OnnxKServeModel(args.name)
    model.load()
    kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1).start([model])


# ---------------------------------------------------------------------------------------------------


def _onnx_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--kind", choices=("digits", "text"), required=True)
    sub.add_argument("--onnx", type=Path, required=True, help="the ONNX file to serve")
    sub.add_argument("--tokenizer", type=Path, help="text: the folder holding tokenizer.json")
    sub.add_argument("--port", type=int, required=True)
    sub.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads per session"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="server", required=True)
    fa = sub.add_parser("fastapi", help="the tutorial FastAPI + PyTorch fp32 endpoint")
    fa.add_argument("--kind", choices=("digits", "text"), required=True)
    fa.add_argument("--weights", type=Path, help="digits: the CNN's safetensors state dict")
    fa.add_argument("--model-dir", type=Path, help="text: a sentence-transformers model folder")
    fa.add_argument("--port", type=int, required=True)
    _onnx_options(sub.add_parser("fastapi-async", help="async FastAPI + ONNX Runtime, one request per run"))
    ls_ = sub.add_parser("litserve", help="LitServe + ONNX Runtime with LitServe's batching")
    _onnx_options(ls_)
    ls_.add_argument("--max-batch-size", type=int, default=32)
    ls_.add_argument("--batch-timeout-s", type=float, default=0.005)
    ls_.add_argument("--workers", type=int, default=1, help="LitServe inference worker processes")
    ls_.add_argument("--timeout-s", type=float, default=30.0, help="LitServe's per-request timeout")
    ks = sub.add_parser("kserve", help="KServe's Python model server + ONNX Runtime (OIP v2)")
    _onnx_options(ks)
    ks.add_argument("--name", required=True, help="the model name in /v2/models/NAME/infer")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = {
        "fastapi": run_fastapi,
        "fastapi-async": run_fastapi_async,
        "litserve": run_litserve,
        "kserve": run_kserve,
    }[args.server]
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
