#!/usr/bin/env bash
# Runs the cross-process benchmarks and prints medians and ratios.
#
#   ./bench.sh [rounds] [benchmark regexp]      (default: 5 rounds, all)
#
# Each round runs every benchmark once, so that machine noise falls on all
# of them alike; the table gives the median of the rounds, and each impl's
# ratio to the floors measured in the same rounds: impl=blocking (raw
# blocking recvmsg/sendmsg), impl=blocking+api (the same doing the JSON
# and *os.File work the four verbs demand) and impl=poller (the same
# through the Go runtime poller).
set -euo pipefail
cd "$(dirname "$0")"
rounds=${1:-5}
pattern=${2:-.}
bin=$(mktemp -d)/channel.test
go test -c -o "$bin" .
out=$(mktemp)
for ((r = 1; r <= rounds; r++)); do
	echo "round $r of $rounds" >&2
	"$bin" -test.run '^$' -test.bench "$pattern" -test.benchmem ${BENCHTIME:+-test.benchtime "$BENCHTIME"} >>"$out"
done
echo "# $(go version); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); Linux $(uname -r)"
echo "# ./bench.sh $rounds '$pattern'   (medians of $rounds rounds)"
grep '^Benchmark' "$out" | awk '
function median(key,   n, i, j, t, a) {
	n = split(vals[key], a, " ")
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
{
	name = $1; sub(/-[0-9]+$/, "", name)
	for (i = 3; i < NF; i += 2) {
		unit = $(i+1)
		if (unit == "ns/op" || unit == "MB/s" || unit == "msgs/s" || unit == "allocs/op") {
			key = name SUBSEP unit
			if (!(key in vals)) { order[++n] = key }
			vals[key] = vals[key] " " $i
		}
	}
}
END {
	printf "%-48s %-10s %14s %10s %14s %10s\n", "benchmark", "unit", "median", "/blocking", "/blocking+api", "/poller"
	for (k = 1; k <= n; k++) {
		split(order[k], p, SUBSEP); name = p[1]; unit = p[2]
		m = median(order[k])
		rb = ra = rp = ""
		if (name ~ /impl=/ && unit != "allocs/op") {
			b = name; sub(/impl=.*/, "impl=blocking", b)
			a = name; sub(/impl=.*/, "impl=blocking+api", a)
			q = name; sub(/impl=.*/, "impl=poller", q)
			if ((b SUBSEP unit) in vals) rb = sprintf("%.2fx", m / median(b SUBSEP unit))
			if ((a SUBSEP unit) in vals) ra = sprintf("%.2fx", m / median(a SUBSEP unit))
			if ((q SUBSEP unit) in vals) rp = sprintf("%.2fx", m / median(q SUBSEP unit))
		}
		printf "%-48s %-10s %14.6g %10s %14s %10s\n", name, unit, m, rb, ra, rp
	}
}'
