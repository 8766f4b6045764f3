# Sourced by scripts/train_*.sh once they have taken DATA_DIR off their arguments ("$@" = the flags for all
# stages): goes to the repository root (the entry points are run from there) and sets OUT to the
# --output-dir the flags name (default: logs), so that stage 2 and test.py look for the earlier stages
# where those stages wrote.
output_dir() {
    local out=logs
    while [ $# -gt 0 ]; do
        case "$1" in
            --output-dir|--output_dir) out="${2:?--output-dir needs a folder}"; shift ;;
            --output-dir=*|--output_dir=*) out="${1#*=}" ;;
        esac
        shift
    done
    printf '%s\n' "$out"
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="$(output_dir "$@")"
