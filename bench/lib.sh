# Sourced by the bench scripts: what every one of them needs to fail
# loudly and to start and stop cleanly.
#
#   bench_init NAME      errors name the script, the line and the command
#   bench_ready URL      waits (up to 15 s) until nginx answers 2xx there
#   bench_stop DIR [NAME...]
#                        stops each nginx whose pid file is DIR/NAME.pid
#                        (default: nginx), waits for each to be gone,
#                        then stops the environment

set -eEuo pipefail

bench_init() {
    bench_name=$1
    trap 'bench_failed $LINENO "$BASH_COMMAND"' ERR
}

bench_failed() {
    echo "bench/$bench_name: failed at line $1: $2" >&2
}

bench_ready() {
    local i
    for i in $(seq 150); do
        if curl -fs -o /dev/null "$1"; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench/$bench_name: $1 did not answer 2xx within 15 s" >&2
    return 1
}

bench_stop() {
    local dir=$1 name pid i
    shift
    [ $# -gt 0 ] || set -- nginx
    for name in "$@"; do
        if [ -f "$dir/$name.pid" ]; then
            pid=$(cat "$dir/$name.pid")
            kill -QUIT "$pid" 2>/dev/null || true
            for i in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    done
    scripts/pf-env bench stop
}
