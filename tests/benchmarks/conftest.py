import pytest


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small FCN-8s/ResNet-18 trained on synthetic VOC, with its FP32, FP16 and both INT8 ONNX exports.

    Trained once per session (about a minute on 2 CPU cores): the parity tests need a model whose
    predictions mean something, not random weights.
    """
    from fcnseg.export.fp16 import convert_fp16
    from fcnseg.export.int8 import quantize_int8
    from fcnseg.export.torch_export import export_onnx
    from fcnseg.train.engine import TrainConfig, train
    from fcnseg.datasets.synth import synthesize

    root = tmp_path_factory.mktemp("trained")
    data = synthesize(root / "data", num_train=160, num_val=32, size=128, seed=5, progress=False)
    train(TrainConfig(data_path=str(data), model="fcn8s_resnet18", epochs=8, batch_size=8, lr=0.02, workers=0,
                      output_dir=str(root / "run"), base_size=128, crop_size=112, device="cpu", plot=False))
    ckpt = root / "run" / "model_best.pth"
    for epoch_ckpt in (root / "run").glob("model_[0-9]*.pth"):   # 8 x 90 MB the tests never read
        epoch_ckpt.unlink()
    fp32 = export_onnx(ckpt, root / "model.onnx", verify_shapes=[(1, 97, 131)]).path
    fp16 = convert_fp16(fp32, root / "model_fp16.onnx").path
    int8 = {t: quantize_int8(fp32, root / f"model_int8_{t}.onnx", calib_root=data, num_images=32, method="minmax",
                             target=t, progress=False).path for t in ("tensorrt", "cpu")}
    return {"data": data, "ckpt": ckpt, "fp32": fp32, "fp16": fp16, "int8": int8["tensorrt"],
            "int8_cpu": int8["cpu"], "root": root}
