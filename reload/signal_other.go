//go:build !unix

package reload

import "os"

// reopenSignals: there is no SIGUSR1 here; a LogFile is reopened only by
// calling Reopen.
var reopenSignals []os.Signal
