package reload

import (
	"io"
	"sync"
	"time"
)

// Defaults of a LineBuffer.
const (
	// DefaultFlushInterval bounds how long a line waits in the buffer:
	// what a crash can lose, and how late `tail -f` sees a line. At full
	// load the buffer fills (and is written) long before; at light load
	// 100 ms is well under what a person watching the log notices, and
	// costs at most ten writes a second.
	DefaultFlushInterval = 100 * time.Millisecond
	// DefaultBufferSize is written at once when full: about 150 canonical
	// lines in one write(2) instead of 150.
	DefaultBufferSize = 64 << 10
)

// LineBuffer collects log lines and writes them to W in batches: when the
// buffer is full, FlushInterval after the first line it holds, on Flush
// and on Close. Each Write is kept whole (zerolog writes one line per
// Write), and lines go out in the order written, so lines never
// interleave or tear, however many goroutines log. A crash loses at most
// the lines of the last FlushInterval.
type LineBuffer struct {
	mu    sync.Mutex
	w     io.Writer
	buf   []byte
	size  int
	every time.Duration
	timer *time.Timer
	armed bool // the timer will flush
}

var _ io.Writer = (*LineBuffer)(nil)

// NewLineBuffer buffers writes to w; interval and size 0 mean the
// defaults.
func NewLineBuffer(w io.Writer, interval time.Duration, size int) *LineBuffer {
	if interval <= 0 {
		interval = DefaultFlushInterval
	}
	if size <= 0 {
		size = DefaultBufferSize
	}
	b := &LineBuffer{w: w, buf: make([]byte, 0, size), size: size, every: interval}
	b.timer = time.AfterFunc(time.Hour, b.tick)
	b.timer.Stop()
	return b
}

// Write adds p, whole, to the buffer; it writes the buffer out first if p
// does not fit, and p itself at once if it is larger than the buffer.
func (b *LineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+len(p) > b.size {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > b.size {
			return b.w.Write(p)
		}
	}
	b.buf = append(b.buf, p...)
	if !b.armed {
		b.armed = true
		b.timer.Reset(b.every)
	}
	return len(p), nil
}

func (b *LineBuffer) tick() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.armed = false
	b.flushLocked()
}

// flushLocked writes the buffer out. A failed write drops it (the log
// must not grow without bound when its disk is full) and is returned once.
func (b *LineBuffer) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// Flush writes out what the buffer holds.
func (b *LineBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

// Close flushes the buffer and stops its timer; later writes go to W
// directly. It does not close W.
func (b *LineBuffer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.timer.Stop()
	b.armed = true // no timer from now on
	err := b.flushLocked()
	b.size = 0 // every later Write goes straight through
	return err
}
