//go:build unix

package reload

import (
	"os"
	"syscall"
)

// reopenSignals reopen a LogFile (logrotate's postrotate).
var reopenSignals = []os.Signal{syscall.SIGUSR1}
