#!/usr/bin/env bash
# Compares the renderer and the programmer of two revisions on this machine:
# builds the render and programming benchmarks of OLD (a git revision) and
# of the working tree, runs them interleaved ROUNDS times each (old, new,
# old, new, ...) so that the machine's drift falls on both alike, and prints
# benchstat's comparison. Needs root (the programming benchmark uses a
# network namespace). Usage: hack/bench-compare.sh OLD [ROUNDS]
set -euo pipefail
old=${1:?usage: hack/bench-compare.sh OLD [ROUNDS]}
rounds=${2:-10}
root=$(git rev-parse --show-toplevel)
benchstat=${BENCHSTAT:-$root/bin/benchstat}
work=$(mktemp -d)
git -C "$root" worktree add -q --detach "$work/old" "$old"
trap 'git -C "$root" worktree remove --force "$work/old"; rm -rf "$work"' EXIT

# The renderer moved from internal/dataplane to internal/dataplane/render.
renderpkg() { if [ -d "$1/internal/dataplane/render" ]; then echo internal/dataplane/render; else echo internal/dataplane; fi; }
for v in old new; do
	src=$root
	[ "$v" = old ] && src=$work/old
	rp=$(renderpkg "$src")
	(cd "$src" && go test -c -o "$work/render-$v.test" "./$rp" && go test -c -o "$work/program-$v.test" ./test/bench)
	echo "$src/$rp" > "$work/render-$v.dir"
done

for i in $(seq "$rounds"); do
	for v in old new; do
		echo "round $i/$rounds: $v" >&2
		(cd "$(cat "$work/render-$v.dir")" && "$work/render-$v.test" -test.run '^$' -test.bench '^BenchmarkRender$' -test.benchmem) |
			grep '^Benchmark' >> "$work/render-$v.txt"
		(cd "$root/test/bench" && "$work/program-$v.test" -test.run '^$' -test.bench '^BenchmarkProgram$' -test.benchtime 1x) |
			grep '^Benchmark' >> "$work/program-$v.txt"
	done
done
echo "old: $(git -C "$root" rev-parse --short "$old"), new: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo ' (with uncommitted changes)'), rounds: $rounds, cores: $(nproc), kernel: $(uname -r)"
for b in render program; do
	"$benchstat" old="$work/$b-old.txt" new="$work/$b-new.txt"
done
