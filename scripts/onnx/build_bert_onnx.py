"""Writes a BERT model's ONNX graph from its safetensors, node by node, without torch.

    python build_bert_onnx.py <model dir> embedder|classifier [fp32|int8]

reads config.json and model.safetensors from <model dir> and writes <model dir>/model.onnx
(fp32, the default) or <model dir>/model.int8.onnx (int8: every encoder weight matrix quantised
per output column, symmetric; activations quantised per batch at run time — ONNX Runtime's dynamic
quantisation, in the pattern it fuses into DynamicQuantizeMatMul; embeddings, LayerNorms, softmax
and pooling stay fp32):
inputs input_ids, attention_mask, token_type_ids (int64, [batch, seq]); output
  - embedder:   sentence_embedding [batch, hidden] (mean over real tokens, L2-normalised:
                sentence-transformers' pooling), or
  - classifier: logits [batch, labels] (BertForSequenceClassification: pooler + classifier).
Next to it, model.onnx.source holds the sha256 of the weights it was built from.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17


class Graph:
    def __init__(self, weights, int8=False):
        self.weights = {k.removeprefix("bert."): v for k, v in weights.items()}
        self.int8 = int8
        self.nodes, self.initializers, self.count = [], [], 0

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, hint="c"):
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, key, transpose=False):
        value = self.weights[key].astype(np.float32)
        return self.const(value.T.copy() if transpose else value, key.replace(".", "_"))

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x, prefix):
        if self.int8 and prefix.startswith("encoder."):
            y = self.int8_matmul(x, prefix)
        else:
            y = self.op("MatMul", [x, self.weight(f"{prefix}.weight", transpose=True)])
        return self.op("Add", [y, self.weight(f"{prefix}.bias")])

    def int8_matmul(self, x, prefix):
        # x @ W.T with W [out, in] quantised per output column: W.T ≈ q * scale, q in [-127, 127].
        w = self.weights[f"{prefix}.weight"].astype(np.float32).T
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        xq = self.name("xq")
        x_scale, x_zero = self.name("x_scale"), self.name("x_zero")
        self.nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [xq, x_scale, x_zero]))
        zeros = np.zeros(q.shape[1], dtype=np.int8)
        product = self.op("MatMulInteger", [xq, self.const(q, "wq"), x_zero, self.const(zeros, "wz")])
        combined = self.op("Mul", [x_scale, self.const(scale.astype(np.float32), "w_scale")])
        return self.op("Mul", [self.op("Cast", [product], to=TensorProto.FLOAT), combined])

    def layer_norm(self, x, prefix, eps):
        return self.op(
            "LayerNormalization",
            [x, self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")],
            axis=-1,
            epsilon=eps,
        )

    def gelu(self, x):
        # The exact (erf) GELU, in the pattern ONNX Runtime fuses into one Gelu node.
        scaled = self.op("Div", [x, self.const(np.float32(np.sqrt(2.0)))])
        erf = self.op("Erf", [scaled])
        one_plus = self.op("Add", [erf, self.const(np.float32(1.0))])
        product = self.op("Mul", [x, one_plus])
        return self.op("Mul", [product, self.const(np.float32(0.5))])


def embeddings(g, eps):
    seq = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(np.int64(1))])
    positions = g.op("Range", [g.const(np.int64(0)), seq, g.const(np.int64(1))])
    words = g.op("Gather", [g.weight("embeddings.word_embeddings.weight"), "input_ids"])
    places = g.op("Gather", [g.weight("embeddings.position_embeddings.weight"), positions])
    types = g.op("Gather", [g.weight("embeddings.token_type_embeddings.weight"), "token_type_ids"])
    summed = g.op("Add", [g.op("Add", [words, places]), types])
    return g.layer_norm(summed, "embeddings.LayerNorm", eps)


def attention_bias(g, mask_float):
    # [batch, seq] → [batch, 1, 1, seq]: 0 for real tokens, a large negative for padding.
    inverted = g.op("Sub", [g.const(np.float32(1.0)), mask_float])
    bias = g.op("Mul", [inverted, g.const(np.float32(-3.4028234663852886e38))])
    return g.op("Unsqueeze", [bias, g.const(np.array([1, 2], dtype=np.int64))])


def encoder_layer(g, h, i, bias, heads, head_dim, eps):
    p = f"encoder.layer.{i}"
    split = g.const(np.array([0, 0, heads, head_dim], dtype=np.int64))

    def heads_of(name, perm):
        projected = g.linear(h, f"{p}.attention.self.{name}")
        return g.op("Transpose", [g.op("Reshape", [projected, split])], perm=perm)

    q = heads_of("query", [0, 2, 1, 3])
    k = heads_of("key", [0, 2, 3, 1])
    v = heads_of("value", [0, 2, 1, 3])
    scores = g.op("Div", [g.op("MatMul", [q, k]), g.const(np.float32(np.sqrt(head_dim)))])
    probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [context, g.const(np.array([0, 0, heads * head_dim], dtype=np.int64))])
    attended = g.linear(merged, f"{p}.attention.output.dense")
    h1 = g.layer_norm(g.op("Add", [attended, h]), f"{p}.attention.output.LayerNorm", eps)
    inner = g.gelu(g.linear(h1, f"{p}.intermediate.dense"))
    out = g.linear(inner, f"{p}.output.dense")
    return g.layer_norm(g.op("Add", [out, h1]), f"{p}.output.LayerNorm", eps)


def mean_pool_normalise(g, h, mask_float):
    mask = g.op("Unsqueeze", [mask_float, g.const(np.array([2], dtype=np.int64))])
    summed = g.op("ReduceSum", [g.op("Mul", [h, mask]), g.const(np.array([1], dtype=np.int64))], keepdims=0)
    counts = g.op("ReduceSum", [mask, g.const(np.array([1], dtype=np.int64))], keepdims=0)
    mean = g.op("Div", [summed, g.op("Max", [counts, g.const(np.float32(1e-9))])])
    norm = g.op("ReduceL2", [mean], axes=[1], keepdims=1)
    return g.op("Div", [mean, g.op("Max", [norm, g.const(np.float32(1e-12))])], hint="sentence_embedding")


def classify(g, h):
    first = g.op("Gather", [h, g.const(np.int64(0))], axis=1)
    pooled = g.op("Tanh", [g.linear(first, "pooler.dense")])
    return g.linear(pooled, "classifier")


def build(model_dir: Path, kind: str, int8: bool) -> onnx.ModelProto:
    config = json.loads((model_dir / "config.json").read_text())
    g = Graph(load_file(str(model_dir / "model.safetensors")), int8)
    heads, hidden, eps = config["num_attention_heads"], config["hidden_size"], config["layer_norm_eps"]
    mask_float = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    bias = attention_bias(g, mask_float)
    h = embeddings(g, eps)
    for i in range(config["num_hidden_layers"]):
        h = encoder_layer(g, h, i, bias, heads, hidden // heads, eps)
    out = mean_pool_normalise(g, h, mask_float) if kind == "embedder" else classify(g, h)
    output_name = "sentence_embedding" if kind == "embedder" else "logits"
    g.nodes.append(helper.make_node("Identity", [out], [output_name]))
    batch_seq = ["batch", "sequence"]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, batch_seq)
        for n in ["input_ids", "attention_mask", "token_type_ids"]
    ]
    width = hidden if kind == "embedder" else g.weights["classifier.weight"].shape[0]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", width])]
    graph = helper.make_graph(g.nodes, f"bert_{kind}", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    model_dir, kind = Path(sys.argv[1]), sys.argv[2]
    precision = sys.argv[3] if len(sys.argv) > 3 else "fp32"
    if kind not in ("embedder", "classifier") or precision not in ("fp32", "int8"):
        sys.exit("usage: build_bert_onnx.py <model dir> embedder|classifier [fp32|int8]")
    name = "model.onnx" if precision == "fp32" else "model.int8.onnx"
    source = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    marker = model_dir / f"{name}.source"
    if (model_dir / name).is_file() and marker.is_file() and marker.read_text().strip() == source:
        print(f"{model_dir}/{name} is up to date")
        return
    model = build(model_dir, kind, precision == "int8")
    tmp = model_dir / f"{name}.tmp"
    onnx.save(model, str(tmp))
    tmp.replace(model_dir / name)
    marker.write_text(source + "\n")
    print(f"wrote {model_dir}/{name} ({kind}, {precision}, from weights {source[:12]})")


if __name__ == "__main__":
    main()
