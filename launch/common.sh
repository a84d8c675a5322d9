# Helpers the launchers source: one-line errors, argument checks and the printing of --dry-run commands.
die() { echo "$LAUNCHER: $*" >&2; exit 2; }
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }
need() { command -v "$1" >/dev/null || die "$1 not found on PATH ($2)"; }
flag_value() {  # NAME ARGS...: the last value of --NAME=V or --NAME V among ARGS
  local name=$1 prev="" value="" a; shift
  for a in "$@"; do
    [[ "$prev" == "--$name" ]] && value=$a
    [[ "$a" == --$name=* ]] && value=${a#--"$name"=}
    prev=$a
  done
  printf '%s' "$value"
}
quoted() {  # ARGS... -> one shell line (words of plain characters as they are, others in single quotes)
  local out=() a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//$q/$q\\$q$q}'"); fi
  done
  printf '%s' "${out[*]}"
}
print_env() { local v; for v in "$@"; do echo "export $v=$(quoted "${!v}")"; done; }
