# ONNX files from `sasprune export`, checked by the ONNX project and ONNX Runtime: the ONNX
# checker (full_check) accepts each file, and ONNX Runtime (CPU) scores it on the CIFAR-10 test set
# from raw pixels (the files are exported with --normalize-in-graph).
# usage: python3 check.py data/cifar-10-batches-bin/test_batch.bin FILE.onnx...
import json, sys, numpy as np, onnx, onnxruntime as ort
for f in sys.argv[2:]:
    m = onnx.load(f); onnx.checker.check_model(m, full_check=True)
    raw = np.fromfile(sys.argv[1], dtype=np.uint8).reshape(10000, 3073)
    labels = raw[:, 0]; images = raw[:, 1:].reshape(10000, 3, 32, 32).astype(np.float32) / 255.0
    s = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    meta = s.get_modelmeta().custom_metadata_map
    correct = 0
    for i in range(0, 10000, 500):
        logits = s.run(["logits"], {"input": images[i:i+500]})[0]
        correct += int((logits.argmax(1) == labels[i:i+500]).sum())
    print(f, "checker ok; onnxruntime top-1 %.2f%%" % (correct / 100), "classes", json.loads(meta["class_names"])[:3], meta["prunable_weights"])
