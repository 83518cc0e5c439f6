package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// commit is the commit egress was built from, for builds that carry no VCS
// information (a source tree without .git, a git worktree, -buildvcs=false):
// -ldflags "-X main.commit=$(git rev-parse HEAD)". go build in a clone
// stamps it by itself (debug.ReadBuildInfo's vcs.revision).
var commit = ""

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: egress version")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Prints the version, the commit egress was built from (\"commit unknown\" when the")
		fmt.Fprintln(stderr, "build carried no VCS information: go run, -buildvcs=false, a git worktree), the Go")
		fmt.Fprintln(stderr, "version and the platform.")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	bi, _ := debug.ReadBuildInfo()
	fmt.Fprintln(stdout, versionLine(bi))
	return exitOK
}

// versionLine is "egress dev (commit 2e6c250f5bdb, 2026-11-29T11:06:11Z)
// go1.26.8 linux/amd64", with ", modified" when the tree had uncommitted
// changes.
func versionLine(bi *debug.BuildInfo) string {
	rev, when, modified := commit, "", false
	if bi != nil {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				when = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	build := "commit unknown"
	if rev != "" {
		build = "commit " + rev[:min(12, len(rev))]
		if when != "" {
			build += ", " + when
		}
		if modified {
			build += ", modified"
		}
	}
	return fmt.Sprintf("egress %s (%s) %s %s/%s", version, build, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
