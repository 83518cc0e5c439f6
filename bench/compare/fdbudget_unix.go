//go:build unix

package main

import "syscall"

// fdBudget is how many idle tunnels one process can hold here: a proxy
// holds two descriptors per tunnel (client and upstream), and so does
// this process (client end and origin end). The rest of the limit is
// margin for listeners, logs and the setups measured meanwhile.
func fdBudget() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur < 2000 {
		return 500
	}
	return int((rl.Cur - 1000) / 2)
}
