# Shared by the scripts (sourced): whatever a script starts or creates is cleaned up when it ends,
# however it ends (EXIT, Ctrl-C, SIGTERM), and every wait has a limit and says what never came.
#   started PID             stop PID (TERM, then KILL after 5 s) when the script ends
#   temp_dir VAR PREFIX     VAR=a new directory under $TMPDIR, removed when the script ends
#   wait_for_address LOG PID WHAT [SECONDS]
#                           prints the address a ragway (or fast-openai) writes to LOG, or fails
#                           after SECONDS (default 180) with the last lines of LOG
#   build_ragway [CARGO ARGS]  the release build, its progress shown (a lock wait is visible)
#   need_build_tools        cmake, a C++ compiler and libclang (llama.cpp is built from source by
#                           the llama-cpp-2 crate), installed with apt-get as root, else a message

_ragway_pids=()
_ragway_dirs=()

started() { _ragway_pids+=("$1"); }

temp_dir() {
  local _ragway_new
  _ragway_new=$(mktemp -d -t "ragway-$2-XXXXXX")
  _ragway_dirs+=("$_ragway_new")
  printf -v "$1" '%s' "$_ragway_new"
}

_ragway_cleanup() {
  local pid waited
  for pid in "${_ragway_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || continue
  done
  for pid in "${_ragway_pids[@]}"; do
    for waited in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for dir in "${_ragway_dirs[@]}"; do
    rm -rf "$dir"
  done
}
trap _ragway_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for_address() {
  local log=$1 pid=$2 what=$3 seconds=${4:-180} address="" deadline
  deadline=$((SECONDS + seconds))
  while [ $SECONDS -lt $deadline ]; do
    address=$(grep -o -m1 -E '(address=|listening on )[0-9.:]+' "$log" 2>/dev/null | grep -o -E '[0-9.]+:[0-9]+' || true)
    if [ -n "$address" ]; then
      echo "$address"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$what exited before it listened; last log lines ($log):" >&2
      tail -n 20 "$log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "$what did not listen within $seconds s; last log lines ($log):" >&2
  tail -n 20 "$log" >&2
  return 1
}

need_build_tools() {
  local missing=()
  command -v cmake >/dev/null || missing+=(cmake)
  command -v g++ >/dev/null || missing+=(g++)
  # libclang itself (bindgen loads it), not libclang-cpp, which LLVM's tools bring without it.
  ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang.so* /usr/lib/*/libclang-[0-9]*.so* >/dev/null 2>&1 \
    || missing+=(libclang-dev)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (Debian packages): llama.cpp is built from source" >&2
    (apt-get install -y -qq "${missing[@]}" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }) \
      || { echo "apt-get install ${missing[*]} failed" >&2; return 1; }
  else
    echo "${missing[*]} needed to build llama.cpp: apt-get install -y ${missing[*]}" >&2
    return 1
  fi
}

build_ragway() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragway/target}"
  need_build_tools
  echo "building ragway (release; the first build takes several minutes)" >&2
  cargo build --release -p ragway-gateway --bin ragway "$@"
}
