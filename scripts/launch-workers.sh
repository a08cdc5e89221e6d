#!/usr/bin/env bash
# Start mnist-exp workers on several hosts for one chief (mnist-exp sweep EXP --serve HOST:PORT) and wait for them.
#
#   MNIST_EXP_TOKEN=... scripts/launch-workers.sh --chief HOST:PORT [--tracking-uri URI] [--data PATH]
#       [--per-host N] [--threads T] [--wait S] [--via 'ssh {host}'] [--mnist-exp PATH] [--logs DIR] HOST...
#
# For each HOST and i in 0..N-1 it runs   <--via, {host} replaced by HOST> '<a POSIX shell command line>'
# so --via must be a command that runs its last argument as a shell command line on that host:
#   'ssh {host}' (default), 'ssh -o BatchMode=yes {host}', 'docker exec -i {host} sh -c', 'ip netns exec {host} sh -c'.
# --via is split on blanks (no quoting); anything fancier belongs in a wrapper script. --mnist-exp: the program on
# the hosts (default: mnist-exp on their PATH; a leading ~/ is the host's home), the chief's release.
#
# The token travels on the command's stdin, never on a command line (ps would show it, here and there).
# stdin then stays open for as long as this script runs: the remote side stops its worker (SIGTERM: the trial's
# run ends KILLED and the chief gives the trial out again) when stdin ends, i.e. when the ssh client dies or this
# script is killed. Ctrl-C / SIGTERM / SIGHUP here are forwarded once to each command (an ssh client then exits
# at once, and its remote worker stops within a batch). Worker ids are <host>-<i>, the host name made to pass
# mnist-exp's name rule; each worker's output goes to DIR/<id>.log (appended). Exit: the worst exit code (a
# worker's, or ssh's own 255 when it failed or was stopped).
set -uo pipefail

me=${0##*/}
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { printf '%s: error: %s\n' "$me" "$*" >&2; exit 2; }
say() { printf '%s: %s\n' "$me" "$*"; }
# One word for a POSIX shell: 'it'\''s' (no $'..': the remote shell may be dash).
q() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

chief='' uri='' data='' per_host=1 threads='' wait_s='' via='ssh {host}' mx='mnist-exp' logs='./worker-logs'
hosts=()
while (($#)); do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --) shift; hosts+=("$@"); break ;;
        --chief|--tracking-uri|--data|--per-host|--threads|--wait|--via|--mnist-exp|--logs)
            (($# >= 2)) || die "$1: needs a value"
            case $1 in
                --chief) chief=$2 ;; --tracking-uri) uri=$2 ;; --data) data=$2 ;; --per-host) per_host=$2 ;;
                --threads) threads=$2 ;; --wait) wait_s=$2 ;; --via) via=$2 ;; --mnist-exp) mx=$2 ;; --logs) logs=$2 ;;
            esac
            shift 2 ;;
        -*) die "$1: unknown option (see --help)" ;;
        *) hosts+=("$1"); shift ;;
    esac
done

[[ -n $chief ]] || die "--chief HOST:PORT is required"
((${#hosts[@]})) || die "no HOST given"
[[ $per_host =~ ^[1-9][0-9]{0,3}$ ]] || die "--per-host $per_host: must be a whole number from 1"
[[ -z $threads || $threads =~ ^[1-9][0-9]{0,3}$ ]] || die "--threads $threads: must be a whole number from 1"
[[ -z $wait_s || $wait_s =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--wait $wait_s: must be a number of seconds"
[[ $via == *'{host}'* ]] || die "--via '$via': must contain {host}"
token=${MNIST_EXP_TOKEN-}
[[ -n $token ]] || die "MNIST_EXP_TOKEN: not set; the workers need the sweep's shared token"
((${#token} >= 16)) || die "MNIST_EXP_TOKEN: at least 16 characters (got ${#token})"
[[ $token != *$'\n'* ]] || die "MNIST_EXP_TOKEN: must be one line"
unset MNIST_EXP_TOKEN  # the commands started here get it on stdin only

# Worker id from a host name: letters, digits, . _ - (others, e.g. the @ of user@host, become -), starting with
# a letter or digit, at most 100 characters with the -<i>, and no "chief" (Keras Tuner would take it for one).
worker_id() {
    local h=${1//[^A-Za-z0-9._-]/-}
    h=${h//chief/chf}
    [[ $h =~ ^[A-Za-z0-9] ]] || h="w$h"
    printf '%s-%s' "${h:0:90}" "$2"
}

# The worker's command line on the host, as words for a POSIX shell.
mx_word=$(q "$mx")
# shellcheck disable=SC2088  # a literal ~/ given by the user, meaning the remote home
[[ $mx == '~/'* ]] && mx_word="\"\$HOME\"/$(q "${mx#'~/'}")"
worker_args=(--chief "$chief")
[[ -n $uri ]] && worker_args+=(--tracking-uri "$uri")
[[ -n $data ]] && worker_args+=(--data "$data")
[[ -n $threads ]] && worker_args+=(--threads "$threads")
[[ -n $wait_s ]] && worker_args+=(--wait "$wait_s")

# What runs there (one line: a csh or fish login shell parses the outer `exec sh -c '...'` too). It reads the
# token, starts the worker, and stops it with one SIGTERM on the first of: a signal to this shell, or the end of
# stdin (a second signal would force the worker to stop mid-batch). It exits with the worker's code.
# shellcheck disable=SC2016  # the $s are the remote shell's
remote_command() {
    local id=$1 a words=''
    for a in "${worker_args[@]}" --id "$id"; do words+=" $(q "$a")"; done
    local s='IFS= read -r MNIST_EXP_TOKEN || exit 2; export MNIST_EXP_TOKEN; exec 3<&0 </dev/null; w=; '
    s+="trap 'trap \"\" INT TERM HUP; kill -TERM \$w 2>/dev/null' INT TERM HUP; "
    s+="$mx_word worker$words 3<&- & w=\$!; unset MNIST_EXP_TOKEN; "
    s+='(cat <&3 >/dev/null 2>&1; kill -TERM $$ 2>/dev/null) >/dev/null 2>&1 & c=$!; exec 3<&-; '
    s+='while :; do wait $w; rc=$?; if [ $rc -gt 128 ] && kill -0 $w 2>/dev/null; then continue; fi; break; done; '
    s+='kill $c 2>/dev/null; exit $rc'
    printf 'exec sh -c %s' "$(q "$s")"
}

# stdin for the commands: the token, then a FIFO that only this script holds open for writing, so a command's
# stdin ends when this script ends, however it ends (kill -9 included).
tmp=$(mktemp -d "${TMPDIR:-/tmp}/launch-workers.XXXXXX") || die "cannot make a temporary folder"
mkfifo -m 600 "$tmp/hold" || die "cannot make a FIFO in $tmp"
# shellcheck disable=SC2094  # on purpose: the read and write ends of one FIFO
exec 8<>"$tmp/hold" 9>"$tmp/hold" 7<"$tmp/hold" 8<&-  # 9: the write end; 7: the read end the commands inherit
rm -rf "$tmp"

mkdir -p -- "$logs" || die "--logs $logs: cannot create it"
read -ra via_words <<<"$via"
ids=() id_hosts=() jobs=()  # no associative arrays: macOS's bash is 3.2
for host in "${hosts[@]}"; do
    [[ -n $host && $host != -* ]] || die "host '$host': not a host name"
    for ((i = 0; i < per_host; i++)); do
        id=$(worker_id "$host" "$i")
        for ((k = 0; k < ${#ids[@]}; k++)); do  # not "${ids[@]}": empty, bash < 4.4 calls it unbound
            [[ ${ids[k]} != "$id" ]] || die "hosts '${id_hosts[k]}' and '$host' both give worker id $id"
        done
        ids+=("$id") id_hosts+=("$host")
    done
done

stopping=''
# shellcheck disable=SC2317  # called from the traps
stop() {
    stopping=$1
    say "$1: stopping the workers"
    ((${#jobs[@]} == 0)) || kill -TERM "${jobs[@]}" 2>/dev/null
}
trap 'sig=1; stop SIGINT' INT
trap 'sig=1; stop SIGTERM' TERM
trap 'sig=1; stop SIGHUP' HUP

# wait_for PID: its exit code, waiting again when a trapped signal interrupted the wait.
wait_for() {
    local rc last=0
    while :; do
        sig=0; wait "$1"; rc=$?
        ((sig)) || break
        last=$rc
    done
    ((rc == 127 && last)) && rc=$last  # the signal came as it ended: that wait had its code
    return "$rc"
}

set -m  # each worker's command in its own process group: a Ctrl-C here reaches it only as forwarded below
for host in "${hosts[@]}"; do
    cmd=()
    for w in "${via_words[@]}"; do cmd+=("${w//'{host}'/"$host"}"); done
    for ((i = 0; i < per_host; i++)); do
        [[ -z $stopping ]] || break 2
        id=$(worker_id "$host" "$i")
        log="$logs/$id.log"
        printf '== %s %s: worker %s on %s ==\n' "$(date '+%F %T')" "$me" "$id" "$host" >>"$log" ||
            die "$log: cannot write"
        (
            exec 9>&-
            pid='' sig=0
            trap 'sig=1; [[ -z $pid ]] || kill -TERM "$pid" 2>/dev/null' INT TERM HUP
            "${cmd[@]}" "$(remote_command "$id")" < <(printf '%s\n' "$token"; exec cat <&7) >>"$log" 2>&1 7<&- &
            pid=$!
            ((sig)) && kill -TERM "$pid" 2>/dev/null
            wait_for "$pid"; rc=$?
            say "worker $id on $host exited $rc (log $log)"
            exit "$rc"
        ) &
        jobs+=($!)
        say "worker $id on $host started (log $log)"
    done
done
set +m

worst=0
for job in ${jobs[@]+"${jobs[@]}"}; do
    wait_for "$job"; rc=$?
    ((rc > worst)) && worst=$rc
done
say "${#jobs[@]} workers done; worst exit code $worst"
exit "$worst"
