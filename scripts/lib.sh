# shellcheck shell=bash
# Helpers shared by scripts/setup, scripts/test and scripts/keyring-env.
# Source it; it defines functions and THV_REPO, and changes nothing else.

# The repository root, found from this file's own location so that the
# scripts work from any checkout path and any working directory.
# shellcheck disable=SC2034 # used by the scripts that source this file
THV_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

# Messages go to stderr so that stdout stays clean for `export` lines.
thv_log() {
    printf '%s: %s\n' "${THV_SCRIPT:-thv}" "$*" >&2
}

thv_die() {
    printf '%s: error: %s\n' "${THV_SCRIPT:-thv}" "$*" >&2
    exit 1
}

# A section header that stands out in a long CI log.
thv_section() {
    printf '\n==== %s ====\n' "$*" >&2
}

# Waits until "$@" succeeds, polling every 0.1 s for at most $1 seconds.
# Usage: thv_wait_for <seconds> <command...>
thv_wait_for() {
    local deadline=$(($1 * 10))
    shift
    local i
    for ((i = 0; i < deadline; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.1
    done
    "$@"
}

# True while a process with this pid exists and is not a zombie. A killed
# daemon is re-parented to pid 1, which may take a moment to reap it, and
# `kill -0` succeeds on a zombie; reading the state field does not lie.
thv_pid_alive() {
    local pid="$1" state
    [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# True when the process runs the program named $2 (as /proc/<pid>/comm
# shows it: truncated to 15 characters).
thv_pid_is() {
    local pid="$1" name="$2" comm
    thv_pid_alive "$pid" || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    [[ "$comm" == "${name:0:15}" ]]
}
