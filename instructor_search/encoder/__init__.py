"""The model: where a checkpoint comes from, how its family uses instructions, and
``Instructor.encode`` with its fast paths (ONNX Runtime, bf16) behind one fidelity gate."""
