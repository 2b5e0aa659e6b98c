"""Deploy: after training. `export` writes a run as a merged transformers model, ONNX and int8
ONNX; `predictor` loads a run or an export folder behind one face (torch or onnxruntime);
`server` serves a predictor over HTTP with dynamic batching; `ray_serve` scales it out."""
