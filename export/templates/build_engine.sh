#!/usr/bin/env bash
# Build the TensorRT engine for THIS device from the bundled ONNX graph (engines are tied to the GPU and the
# TensorRT version, so they are built where they run). Written by `fcn-export bundle`; values below come from it.
#
#   ./build_engine.sh [fp16|int8] [--high-precision fp32|fp16] [--library auto|tensorrt|tensorrt_rtx] [--trtexec] [--force]
#
# With fcnseg's exporter installed (`fcn-export` on PATH) it runs `fcn-export trt`, which also writes the
# engine's sidecar <plan>.json. Otherwise (or with --trtexec) it runs trtexec with the same optimization
# profile and flags, then writes the sidecar from bundle.json with python3's standard library.
#
# int8 builds fcn_int8.plan from the INT8 graph the TensorRT found here parses, and prints which and why:
# TensorRT 10+ and TensorRT for RTX (strongly typed) take fcn_int8_fp16.onnx (opset 19, FP16 elsewhere) when
# the bundle has it, TensorRT 8.5/8.6 fcn_int8.onnx (opset 17, FP32 elsewhere, mixed with FP16 by --int8 --fp16).
# --high-precision fp32 takes fcn_int8.onnx, fp16 fcn_int8_fp16.onnx, whatever the TensorRT.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INPUT_NAME="@INPUT_NAME@"
MIN_SHAPE="@MIN_SHAPE@"
OPT_SHAPE="@OPT_SHAPE@"
MAX_SHAPE="@MAX_SHAPE@"
DLA_CORE="@DLA_CORE@"          # empty: the GPU
GPU_FALLBACK="@GPU_FALLBACK@"  # 1: layers the DLA cannot run go to the GPU
PRECISIONS="@PRECISIONS@"
GRAPHS="@GRAPHS@"  # bundle.json's graphs: fp16, int8 (fcn_int8.onnx, opset 17), int8_fp16 (fcn_int8_fp16.onnx, opset 19)

usage() { echo "usage: ./build_engine.sh [${PRECISIONS// /|}] [--high-precision fp32|fp16] [--library auto|tensorrt|tensorrt_rtx] [--trtexec] [--force]"; }
fail() { echo "error: $*" >&2; exit 2; }
has_graph() { case " $GRAPHS " in *" $1 "*) return 0 ;; esac; return 1; }

PRECISION="@DEFAULT_PRECISION@"; HIGH=""; LIBRARY="auto"; USE_TRTEXEC=0; FORCE=0
while [ $# -gt 0 ]; do
  case "$1" in
    fp16|int8) PRECISION="$1" ;;
    --high-precision) [ $# -ge 2 ] || fail "expected fp32 or fp16 after --high-precision, got none; try --high-precision fp32"; HIGH="$2"; shift ;;
    --library) [ $# -ge 2 ] || fail "expected a name after --library, got none; try --library tensorrt"; LIBRARY="$2"; shift ;;
    --trtexec) USE_TRTEXEC=1 ;;
    --force) FORCE=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; fail "expected fp16, int8, --high-precision fp32|fp16, --library NAME, --trtexec or --force, got '$1'" ;;
  esac
  shift
done
case " $PRECISIONS " in *" $PRECISION "*) ;; *) fail "expected one of: $PRECISIONS (the graphs in this bundle), got $PRECISION" ;; esac
case "$HIGH" in ""|fp32|fp16) ;; *) fail "expected --high-precision fp32 or fp16, got '$HIGH'; try --high-precision fp32" ;; esac
if [ -n "$HIGH" ] && [ "$PRECISION" != int8 ]; then
  fail "expected --high-precision with int8 (what its layers outside INT8 run in), got it with $PRECISION; try ./build_engine.sh int8 --high-precision $HIGH"
fi
if [ "$HIGH" = fp16 ] && ! has_graph int8_fp16; then
  fail "expected fcn_int8_fp16.onnx (FP16 elsewhere) for --high-precision fp16, got a bundle without it; try --high-precision fp32, or a bundle made with --calib-data"
fi
if [ "$HIGH" = fp32 ] && ! has_graph int8; then
  fail "expected fcn_int8.onnx (FP32 elsewhere) for --high-precision fp32, got a bundle without it; try --high-precision fp16, or a bundle made with --calib-data"
fi

PLAN="$HERE/fcn_${PRECISION}.plan"
if [ -e "$PLAN" ] && [ "$FORCE" != 1 ]; then
  fail "expected no engine at $PLAN yet, got one; try --force to rebuild it"
fi

# The TensorRT that builds, as "MODULE VERSION" (tensorrt 10.3.0, tensorrt_rtx 1.7.1): from trtexec's banner,
# "[TensorRT v8502]" (8.5.2) or "[TensorRT v100300]" (10.3.0), or a Python module's __version__.
banner_version() {
  local n
  n="$(grep -oE '\[TensorRT v[0-9]+\]' <<<"$1" | head -n 1 | tr -cd '0-9' || true)"
  [ -n "$n" ] || return 0
  if [ "$n" -ge 10000 ]; then echo "$((n / 10000)).$((n / 100 % 100)).$((n % 100))"
  else echo "$((n / 1000)).$((n / 100 % 10)).$((n % 100))"; fi
}
module_version() {  # $1: python, $2: auto|tensorrt|tensorrt_rtx (auto: tensorrt, else tensorrt_rtx, as fcn-export)
  "$1" - "$2" 2>/dev/null <<'PY' || true
import importlib, sys
for name in {"auto": ("tensorrt", "tensorrt_rtx")}.get(sys.argv[1], (sys.argv[1],)):
    try:
        module = importlib.import_module(name)
    except Exception:
        continue
    if hasattr(module, "Runtime"):   # a bare `tensorrt` folder (type stubs) is not TensorRT
        print(name, getattr(module, "__version__", "unknown"))
        break
PY
}
exporter_python() {  # the interpreter of fcn-export's script: its TensorRT is the one `fcn-export trt` uses
  local line
  line="$(head -n 1 "$(command -v fcn-export)" 2>/dev/null || true)"
  line="${line#\#!}"; line="${line%% *}"
  case "$line" in */python*) [ -x "$line" ] && { echo "$line"; return; } ;; esac
  echo python3
}
# Which INT8 graph: fcn_int8_fp16.onnx for a strongly typed builder (TensorRT 10+, TensorRT for RTX) when
# shipped, else fcn_int8.onnx (opset 17: every TensorRT parses it); --high-precision chooses instead.
pick_int8() {  # $1: module, $2: version; sets GRAPH and says which and why
  local name="TensorRT $2" major="${2%%.*}" strong=""
  [ "$1" = tensorrt_rtx ] && name="TensorRT for RTX $2"
  [ -n "$1" ] || name="no TensorRT version found"
  case "$major" in ''|*[!0-9]*) ;; *) strong=0; [ "$major" -ge 10 ] && strong=1 ;; esac
  [ "$1" = tensorrt_rtx ] && strong=1
  local why
  if [ "$HIGH" = fp16 ]; then
    [ "$strong" != 0 ] || fail "expected TensorRT 10+ for fcn_int8_fp16.onnx (opset 19), got $name; try --high-precision fp32"
    GRAPH=int8_fp16; why="--high-precision fp16"
  elif [ "$HIGH" = fp32 ]; then
    GRAPH=int8; why="--high-precision fp32"
  elif [ "$strong" = 1 ] && has_graph int8_fp16; then
    GRAPH=int8_fp16; why="$name is strongly typed: INT8 with FP16 elsewhere, opset 19"
  elif has_graph int8; then
    GRAPH=int8
    case "$strong" in
      1) why="$name, but the bundle has no fcn_int8_fp16.onnx: INT8 with FP32 elsewhere" ;;
      0) why="$name parses opset <= 17: INT8 with FP32 elsewhere, mixed with FP16 by --int8 --fp16" ;;
      *) why="$name: the opset-17 graph every TensorRT parses" ;;
    esac
  else
    [ "$strong" != 0 ] || fail "expected TensorRT 10+ for this bundle's only INT8 graph fcn_int8_fp16.onnx (opset 19), got $name; try a bundle made with --calib-data (it ships the opset-17 fcn_int8.onnx too)"
    GRAPH=int8_fp16; why="$name: the bundle's only INT8 graph (opset 19, TensorRT 10+)"
  fi
  echo "int8: fcn_${GRAPH}.onnx ($why)"
}

DLA_ARGS=()
if [ -n "$DLA_CORE" ]; then
  DLA_ARGS=(--dla-core "$DLA_CORE")
  [ "$GPU_FALLBACK" = 1 ] && DLA_ARGS+=(--gpu-fallback)
fi

GRAPH="$PRECISION"
if [ "$USE_TRTEXEC" != 1 ] && command -v fcn-export >/dev/null 2>&1; then
  if [ "$PRECISION" = int8 ]; then
    FOUND="$(module_version "$(exporter_python)" "$LIBRARY")"
    pick_int8 "${FOUND%% *}" "${FOUND#* }"
  fi
  ONNX="$HERE/fcn_${GRAPH}.onnx"
  [ -f "$ONNX" ] || fail "expected the graph $ONNX, got no such file; copy the whole bundle folder"
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
# trtexec's own TensorRT builds (and parses the graph); python3's tensorrt only where its banner says nothing
TRT_VERSION="$(banner_version "$HELP")"
if [ -z "$TRT_VERSION" ]; then FOUND="$(module_version python3 tensorrt)"; TRT_VERSION="${FOUND#* }"; fi
if [ "$PRECISION" = int8 ]; then
  pick_int8 "${TRT_VERSION:+tensorrt}" "$TRT_VERSION"
fi
ONNX="$HERE/fcn_${GRAPH}.onnx"
[ -f "$ONNX" ] || fail "expected the graph $ONNX, got no such file; copy the whole bundle folder"

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

# The sidecar fcn-export would have written: bundle.json's template of the graph built (its "onnx" names it)
# plus the TensorRT version found above.
python3 - "$HERE/bundle.json" "$GRAPH" "$PLAN" "${TRT_VERSION:-unknown}" <<'PY'
import json, os, sys
manifest, graph, plan, version = sys.argv[1:5]
with open(manifest) as f:
    sidecar = json.load(f)["graphs"][graph]["sidecar"]
sidecar["library_version"] = version
tmp = plan + ".json.tmp"
with open(tmp, "w") as f:
    json.dump(sidecar, f, indent=2)
    f.write("\n")
os.replace(tmp, plan + ".json")
print(plan + ".json")
PY
echo "$PLAN"
