"""The README written into a Triton model repository: its tree, the server command and a client per entry model."""

from __future__ import annotations

from typing import Any, List

from .triton_io import TritonRepository

CLIENTS = {
    "image_bytes": '''```python
import numpy as np
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient("127.0.0.1:8000")
data = np.array([[open("image.jpg", "rb").read()]], dtype=object)      # 1 x 1 encoded image
image = httpclient.InferInput("image", data.shape, "BYTES")
image.set_data_from_numpy(data)
mask = client.infer("{entry}", [image]).as_numpy("mask")[0]            # HxW uint8 class ids, the image's size
```''',
    "image_array": '''```python
import numpy as np
import tritonclient.http as httpclient
from PIL import Image

client = httpclient.InferenceServerClient("127.0.0.1:8000")
rgb = np.asarray(Image.open("image.jpg").convert("RGB"))[None]          # 1 x H x W x 3 uint8
image = httpclient.InferInput("image", rgb.shape, "UINT8")
image.set_data_from_numpy(rgb)
mask = client.infer("{entry}", [image]).as_numpy("mask")[0]            # HxW uint8 class ids, the image's size
```''',
    "tensor": '''```python
import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from fcnseg.runtime import preprocess

client = httpclient.InferenceServerClient("127.0.0.1:8000")
x = preprocess(np.asarray(Image.open("image.jpg").convert("RGB")), size={size})   # 1x3xhxw float32, normalised
inp = httpclient.InferInput("{input}", x.shape, "FP32")
inp.set_data_from_numpy(x)
out = client.infer("{entry}", [inp]).as_numpy("{output}")[0]            # {what}
```''',
}


def _tree(repo: TritonRepository) -> List[str]:
    lines = [f"{repo.root.name}/", "  README.md"]
    for name in repo.models:
        lines.append(f"  {name}/")
        lines.append("    config.pbtxt")
        files = sorted(p.name for p in (repo.root / name / "1").glob("*")) if (repo.root / name / "1").is_dir() else []
        lines.append("    1/" + ("  " + ", ".join(files) if files else ""))
    return lines


def _client(repo: TritonRepository) -> str:
    config: Any = repo.configs[repo.entry]
    first_in, first_out = config.input[0], config.output[0]
    if config.platform == "ensemble":
        return CLIENTS["image_bytes"].format(entry=repo.entry)
    if config.backend == "python":
        return CLIENTS["image_array"].format(entry=repo.entry)
    what = ("Hxw uint8 class ids at the network's resolution" if first_out.name == "mask"
            else "CxHxW float32 class scores: argmax(0) is the mask")
    return CLIENTS["tensor"].format(entry=repo.entry, input=first_in.name, output=first_out.name, what=what,
                                    size=repo.input_size)


def _profile(repo: TritonRepository) -> List[str]:
    """The engine's optimization profile: the input shapes it accepts (Triton's max batch stays within it)."""
    if not repo.profile:
        return []
    shapes = {k: "x".join(str(d) for d in repo.profile[k]) for k in ("min", "opt", "max") if k in repo.profile}
    return [f"The engine accepts inputs (NxCxHxW) from {shapes.get('min')} to {shapes.get('max')} "
            f"(optimised for {shapes.get('opt')}); images are resized before they reach it.", ""]


def _slide_note(repo: TritonRepository) -> List[str]:
    params = {n: repo.configs[n].parameters for n in repo.models}
    slide = [n for n, p in params.items() if "fcnseg_role" in p and p["fcnseg_role"].string_value == "image_slide"]
    if not slide:
        return []
    return [f"Large images: call **{slide[0]}** the same way. It segments the image at its own size in "
            "overlapping tiles (the tile and stride are in its config's `fcnseg_view`), each batch of tiles run "
            "by the network through BLS, and returns the mask at the image's size.", ""]


def readme_text(repo: TritonRepository) -> str:
    """Markdown: what the repository holds, how to start Triton on it, and how to call the entry model."""
    python_models = [n for n in repo.models if repo.configs[n].backend == "python"]
    note = ("" if not python_models else
            f"\nThe Python-backend models ({', '.join(python_models)}) import `fcnseg.runtime`: the Python that "
            "Triton's Python backend runs needs `pip install --no-deps fcnseg` plus numpy, pillow and the model's "
            "inference library (onnxruntime for an .onnx).\n")
    return "\n".join([
        "# Triton model repository written by `fcn-export triton`", "",
        f"Clients call **{repo.entry}**.", "", "```", *_tree(repo), "```", note, *_profile(repo),
        "## Start the server", "", "```bash",
        f"tritonserver --model-repository {repo.root.resolve()}",
        f"# or, with fcnseg's bundled server (Python-backend models):  fcn-serve --repo {repo.root.resolve()}",
        "curl -sf 127.0.0.1:8000/v2/health/ready && echo ready", "```", "",
        "## Call it (HTTP; `tritonclient.grpc` on port 8001 works the same)", "", _client(repo), "",
        *_slide_note(repo),
        "Throughput and p50/p90/p99 latency at 1, 4 and 16 concurrent clients:", "", "```bash",
        f"fcn-bench --triton 127.0.0.1:8000 --triton-model {repo.entry}", "```", "",
    ])
