package main

import "golang.org/x/sys/unix"

// makeNonDumpable closes egress's /proc/PID/environ and /proc/PID/mem
// (and ptrace) to processes of the same user that lack CAP_SYS_PTRACE:
// CMD under egress run.
func makeNonDumpable() error { return unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0) }
