"""Training Spark (and dense) Gemma models in PyTorch, exported to the engine file.

Optional: needs the `[train]` extra (PyTorch CPU). The engine and the rest of the package never
import this package; `spark_infer.train.text` (corpus and tokenizer) is torch-free. It may import
the runtime (`config`, `fileformat`, `tokenizer`, `models`, `reference`, `data`), `convert` (to
start from a converted checkpoint) and `bench.machine` (the machine named in its report).

- `modules.SparkLM`: Gemma 2/3 blocks with the Spark FFN and Spark attention exactly as
  docs/engine-file.md defines them (statistical top-k, soft threshold, predictor dims,
  softmax x softplus), or dense ones; its state_dict keys are the engine tensor names.
- `checkpoint`: save/load a checkpoint directory (model.safetensors + spark_config.json +
  tokenizer.model), export to an engine file through `fileformat.write_engine_file`.
- `trainer`: presets, the training loop and its report; `python -m spark_infer.train`.
- `uptrain`: a dense Gemma 3 checkpoint into Spark form, distilled from the dense teacher.
"""
