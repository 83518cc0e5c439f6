package reload

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"time"
)

// LogFile is an append-only log file that can be reopened by name, so that
// logrotate can move it away and signal egress (SIGUSR1) to start a new one
// without copytruncate. It is an io.Writer safe for concurrent use; each
// Write goes to the file in one write(2), so zerolog lines never interleave.
// Buffered puts a LineBuffer in front of it.
type LogFile struct {
	path string

	mu  sync.Mutex
	f   *os.File
	buf *LineBuffer // flushed into the old file before a reopen

	stop chan struct{}
	done chan struct{}
}

var _ io.Writer = (*LogFile)(nil)

// OpenLogFile opens (creating, mode 0640) path for appending.
func OpenLogFile(path string) (*LogFile, error) {
	f, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &LogFile{path: path, f: f}, nil
}

func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	return f, nil
}

// Write appends p to the file.
func (l *LogFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return 0, os.ErrClosed
	}
	return l.f.Write(p)
}

// Buffered returns a LineBuffer that writes to l; Reopen flushes it into
// the old file first, so a rotated file holds every line logged before the
// signal. Close the LineBuffer before l.
func (l *LogFile) Buffered(interval time.Duration, size int) *LineBuffer {
	b := NewLineBuffer(l, interval, size)
	l.mu.Lock()
	l.buf = b
	l.mu.Unlock()
	return b
}

// Reopen opens the path again and switches writes to it. If the path
// cannot be opened, writes keep going to the old file and the error is
// returned.
func (l *LogFile) Reopen() error {
	l.mu.Lock()
	buf := l.buf
	l.mu.Unlock()
	if buf != nil {
		buf.Flush()
	}
	f, err := openAppend(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		return old.Close()
	}
	return nil
}

// ReopenOnSignal reopens the file whenever the process gets SIGUSR1, until
// Close. onErr, if not nil, sees a failed reopen (the log keeps going to
// the old file). It returns once the signal handler is in place.
func (l *LogFile) ReopenOnSignal(onErr func(error)) {
	l.mu.Lock()
	if l.stop != nil {
		l.mu.Unlock()
		return
	}
	stop, done := make(chan struct{}), make(chan struct{})
	l.stop, l.done = stop, done
	l.mu.Unlock()
	usr1 := make(chan os.Signal, 1)
	if len(reopenSignals) > 0 {
		signal.Notify(usr1, reopenSignals...)
	}
	go func() {
		defer close(done)
		defer signal.Stop(usr1)
		for {
			select {
			case <-stop:
				return
			case <-usr1:
				if err := l.Reopen(); err != nil && onErr != nil {
					onErr(err)
				}
			}
		}
	}()
}

// Close stops the signal handler and closes the file.
func (l *LogFile) Close() error {
	l.mu.Lock()
	stop, done := l.stop, l.done
	l.stop = nil
	l.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("log file already closed")
	}
	err := l.f.Close()
	l.f = nil
	return err
}
