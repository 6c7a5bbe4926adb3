#!/usr/bin/env bash
# Counts syscalls per round trip of the small value, both processes
# together, with strace -f -c, for each implementation of
# BenchmarkRoundTrip (the child is re-executed, so -f follows it).
#
#   ./syscalls.sh [round trips]          (default 20000)
set -euo pipefail
cd "$(dirname "$0")"
n=${1:-20000}
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 1; }
bin=$(mktemp -d)/channel.test
go test -c -o "$bin" .
printf '%-20s %8s  %s\n' impl total 'per round trip, by syscall (>= 0.1)'
for impl in fds=0/impl=blocking fds=0/impl=poller fds=0/impl=channel fds=1/impl=blocking fds=1/impl=poller fds=1/impl=channel; do
	log=$(mktemp)
	strace -f -c -o "$log" "$bin" -test.run '^$' -test.bench "^BenchmarkRoundTrip/${impl}\$" -test.benchtime "${n}x" >/dev/null
	# The last column is the name; calls is the 4th column of each row.
	awk -v n="$n" -v impl="$impl" '
		$NF != "total" && $4 ~ /^[0-9]+$/ { c[$NF] = $4 / n; tot += $4 / n }
		END {
			s = ""
			for (k in c) if (c[k] >= 0.1) s = s sprintf("%s %.1f, ", k, c[k])
			printf "%-20s %8.1f  %s\n", impl, tot, s
		}' "$log"
	rm -f "$log"
done
