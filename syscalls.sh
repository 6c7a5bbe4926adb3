#!/usr/bin/env bash
# Counts syscalls per round trip of the small value, both processes
# together, with strace -f, for each implementation of BenchmarkRoundTrip
# (the child is re-executed, so -f follows it); and the epoll returns that
# carry only EPOLLOUT events, which wake a thread for nothing when no Send
# waits (there are none in these benchmarks).
#
#   ./syscalls.sh [round trips]          (default 20000)
set -euo pipefail
cd "$(dirname "$0")"
n=${1:-20000}
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 1; }
bin=$(mktemp -d)/channel.test
go test -c -o "$bin" .
printf '%-20s %8s %10s  %s\n' impl total EPOLLOUT 'per round trip, by syscall (>= 0.1)'
for impl in ${IMPLS:-fds=0/impl=blocking fds=0/impl=poller fds=0/impl=ndjson fds=0/impl=channel fds=1/impl=blocking fds=1/impl=poller fds=1/impl=channel}; do
	log=$(mktemp)
	strace -f -qq -e trace=all -e signal=none -o "$log" "$bin" -test.run '^$' -test.bench "^BenchmarkRoundTrip\$/^${impl%%/*}\$/^${impl#*/}\$" -test.benchtime "${n}x" >/dev/null
	# One line a call, or two when strace splits one between threads:
	# count each call once, on the line that starts with its name.
	awk -v n="$n" -v impl="$impl" '
		{ sub(/^[0-9]+ +/, "") }
		match($0, /^[a-z_0-9]+\(/) { c[substr($0, 1, RLENGTH - 1)]++; tot++ }
		# Events are on the line with the result: the call itself, or its
		# "resumed" line when strace split it.
		/^(<\.\.\. )?epoll_p?wait/ && /events=/ && !/events=[^,]*EPOLL(IN|HUP|ERR|RDHUP)/ { outonly++ }
		END {
			s = ""
			for (k in c) if (c[k] / n >= 0.1) s = s sprintf("%s %.1f, ", k, c[k] / n)
			printf "%-20s %8.1f %10d  %s\n", impl, tot / n, outonly, s
		}' "$log"
	rm -f "$log"
done
