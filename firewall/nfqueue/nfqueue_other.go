//go:build !linux

package nfqueue

import "errors"

// Queue holds nothing: NFQUEUE is Linux's.
type Queue struct{}

var errUnsupported = errors.New("nfqueue: needs Linux")

// Read fails at once.
func (q *Queue) Read(func(Packet)) error { return errUnsupported }

// Verdict fails.
func (q *Queue) Verdict(uint32, Verdict) error { return errUnsupported }

// Close does nothing.
func (q *Queue) Close() error { return nil }
