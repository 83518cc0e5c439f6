// Package transparentbench benchmarks egress's transparent TCP path
// against a direct connection, in the same run: the ratio is the figure
// (target: at least 0.9x direct). Run ./run.sh, which also times
// "egress run -- true" (target: under 150 ms). The benchmarks need Linux
// and root (a network namespace with nftables redirects) and skip
// otherwise. There is no code here besides the benchmarks.
package transparentbench
