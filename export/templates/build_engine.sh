#!/usr/bin/env bash
# Build the TensorRT engine for THIS device from the bundled ONNX graph (engines are tied to the GPU and the
# TensorRT version, so they are built where they run). Written by `fcn-export bundle`; values below come from it.
#
#   ./build_engine.sh [fp16|int8] [--library auto|tensorrt|tensorrt_rtx] [--trtexec] [--force]
#
# With fcnseg's exporter installed (`fcn-export` on PATH) it runs `fcn-export trt`, which also writes the
# engine's sidecar <plan>.json. Otherwise (or with --trtexec) it runs trtexec with the same optimization
# profile and flags, then writes the sidecar from bundle.json with python3's standard library.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INPUT_NAME="@INPUT_NAME@"
MIN_SHAPE="@MIN_SHAPE@"
OPT_SHAPE="@OPT_SHAPE@"
MAX_SHAPE="@MAX_SHAPE@"
DLA_CORE="@DLA_CORE@"          # empty: the GPU
GPU_FALLBACK="@GPU_FALLBACK@"  # 1: layers the DLA cannot run go to the GPU
PRECISIONS="@PRECISIONS@"

usage() { echo "usage: ./build_engine.sh [${PRECISIONS// /|}] [--library auto|tensorrt|tensorrt_rtx] [--trtexec] [--force]"; }
fail() { echo "error: $*" >&2; exit 2; }

PRECISION="@DEFAULT_PRECISION@"; LIBRARY="auto"; USE_TRTEXEC=0; FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    fp16|int8) PRECISION="$1" ;;
    --library) [ $# -ge 2 ] || fail "expected a name after --library, got none; try --library tensorrt"; LIBRARY="$2"; shift ;;
    --trtexec) USE_TRTEXEC=1 ;;
    --force) FORCE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; fail "expected fp16, int8, --library NAME, --trtexec or --force, got '$1'" ;;
  esac
  shift
done
case " $PRECISIONS " in *" $PRECISION "*) ;; *) fail "expected one of: $PRECISIONS (the graphs in this bundle), got $PRECISION" ;; esac

ONNX="$HERE/fcn_${PRECISION}.onnx"
PLAN="$HERE/fcn_${PRECISION}.plan"
[ -f "$ONNX" ] || fail "expected the graph $ONNX, got no such file; copy the whole bundle folder"
if [ -e "$PLAN" ] && [ "$FORCE" != 1 ]; then
  fail "expected no engine at $PLAN yet, got one; try --force to rebuild it"
fi

DLA_ARGS=()
if [ -n "$DLA_CORE" ]; then
  DLA_ARGS=(--dla-core "$DLA_CORE")
  [ "$GPU_FALLBACK" = 1 ] && DLA_ARGS+=(--gpu-fallback)
fi

if [ "$USE_TRTEXEC" != 1 ] && command -v fcn-export >/dev/null 2>&1; then
  FORCE_ARGS=(); [ "$FORCE" = 1 ] && FORCE_ARGS=(--force)
  set -x
  fcn-export trt "$ONNX" -o "$PLAN" --min-shape "$MIN_SHAPE" --opt-shape "$OPT_SHAPE" --max-shape "$MAX_SHAPE" \
    --library "$LIBRARY" ${DLA_ARGS[@]+"${DLA_ARGS[@]}"} ${FORCE_ARGS[@]+"${FORCE_ARGS[@]}"}
  exit 0
fi

TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"
[ -x "$TRTEXEC" ] || fail "expected fcn-export or trtexec, got neither (looked for trtexec on PATH and at $TRTEXEC); try: sudo apt install tensorrt (JetPack), or set TRTEXEC=/path/to/trtexec"
HELP="$("$TRTEXEC" --help 2>&1 || true)"
has_flag() { grep -qE -- "(^|[[:space:]])$1([[:space:]=]|$)" <<<"$HELP"; }

# Precision comes from the graph (FP16-typed or Q/DQ). Strongly typed where trtexec has it (TensorRT 9+),
# except on the DLA while per-precision flags still exist (TensorRT 8.x/10.x DLA builds use them);
# TensorRT 8.x has only the flags.
PREC_FLAGS=(--fp16); [ "$PRECISION" = int8 ] && PREC_FLAGS=(--int8 --fp16)
if has_flag --stronglyTyped && { [ -z "$DLA_CORE" ] || ! has_flag --fp16; }; then
  PREC_FLAGS=(--stronglyTyped)
fi
TRT_DLA=()
if [ -n "$DLA_CORE" ]; then
  TRT_DLA=(--useDLACore="$DLA_CORE")
  [ "$GPU_FALLBACK" = 1 ] && TRT_DLA+=(--allowGPUFallback)
fi

set -x
"$TRTEXEC" --onnx="$ONNX" --saveEngine="$PLAN" \
  --minShapes="$INPUT_NAME:$MIN_SHAPE" --optShapes="$INPUT_NAME:$OPT_SHAPE" --maxShapes="$INPUT_NAME:$MAX_SHAPE" \
  "${PREC_FLAGS[@]}" ${TRT_DLA[@]+"${TRT_DLA[@]}"}
{ set +x; } 2>/dev/null

# The sidecar fcn-export would have written: bundle.json's template plus this device's TensorRT version.
python3 - "$HERE/bundle.json" "$PRECISION" "$PLAN" "$TRTEXEC" <<'PY'
import json, os, re, subprocess, sys
manifest, precision, plan, trtexec = sys.argv[1:5]
with open(manifest) as f:
    sidecar = json.load(f)["graphs"][precision]["sidecar"]
def trtexec_version():
    # trtexec prints "[TensorRT v8502]" (8.5.2) or "[TensorRT v100300]" (10.3.0) when it starts.
    out = subprocess.run([trtexec, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True).stdout
    found = re.search(r"\[TensorRT v(\d+)\]", out)
    if not found:
        return "unknown"
    n = int(found.group(1))
    parts = (n // 10000, n // 100 % 100, n % 100) if n >= 10000 else (n // 1000, n // 100 % 10, n % 100)
    return "%d.%d.%d" % parts

try:
    import tensorrt
    version = tensorrt.__version__
except Exception:
    version = trtexec_version()
sidecar["library_version"] = version
tmp = plan + ".json.tmp"
with open(tmp, "w") as f:
    json.dump(sidecar, f, indent=2)
    f.write("\n")
os.replace(tmp, plan + ".json")
print(plan + ".json")
PY
echo "$PLAN"
