"""ONNX Runtime int8's error on the golden models, the bar of crossenc's int8 test
(tests/golden.rs): each tiny cross-encoder of ../shared/golden exported to ONNX, quantized as
ort_bench.py does (quantize_dynamic, QInt8 weights), and scored on its 8 golden pairs; writes the
largest |int8 - fp32| of the predict scores (sigmoid for one label, raw logits for several).

    python scripts/ort_int8_golden.py ../shared/golden tests/fixtures/ort-int8-golden.json

Needs torch, transformers, onnx, onnxruntime (the reference venv of ../shared/reference).
"""
import json, os, sys, tempfile
import numpy as np, torch, onnxruntime as ort
from transformers import AutoModelForSequenceClassification
from onnxruntime.quantization import quantize_dynamic, QuantType

golden, out = sys.argv[1], sys.argv[2]
names = ["tiny-bert", "tiny-bert-3labels", "tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert",
         "tiny-electra"]
errors, tmp = {}, tempfile.mkdtemp()
for name in names:
    md = os.path.join(golden, name)
    g = json.load(open(os.path.join(md, "golden.json")))
    model = AutoModelForSequenceClassification.from_pretrained(md).eval()
    inputs = [n for n in ["input_ids", "attention_mask", "token_type_ids"] if g.get(n) is not None]
    enc = {n: torch.tensor(g[n]) for n in inputs}
    fp32, int8 = os.path.join(tmp, name + ".onnx"), os.path.join(tmp, name + "-int8.onnx")
    torch.onnx.export(model, tuple(enc[n] for n in inputs), fp32, input_names=inputs,
                      output_names=["logits"], dynamic_axes={n: {0: "b", 1: "s"} for n in inputs},
                      opset_version=17, dynamo=False)
    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    scores = []
    for path in [fp32, int8]:
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        logits = s.run(None, {n: enc[n].numpy().astype(np.int64) for n in inputs})[0]
        scores.append(1 / (1 + np.exp(-logits)) if logits.shape[1] == 1 else logits)
    golden_d = float(np.abs(scores[0].ravel() - np.array(g["predict_scores"]).ravel()).max())
    assert golden_d < 1e-4, f"{name}: ONNX fp32 differs from the golden scores by {golden_d}"
    errors[name] = float(np.abs(scores[1] - scores[0]).max())
    print(name, errors[name], flush=True)
errors["onnxruntime"] = ort.__version__
json.dump(errors, open(out, "w"), indent=2)
