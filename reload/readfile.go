package reload

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// MaxFileSize bounds a policy file: far above any real policy, far below
// what would exhaust the process.
const MaxFileSize = 16 << 20

// ReadFile reads a policy file, main or included: a regular file of at
// most MaxFileSize bytes. It is what egress passes to policy.LoadWith. A
// FIFO, device or directory is refused rather than read: opening a FIFO
// nobody writes blocks forever (a reload would stop for good), and
// /dev/zero never ends. O_NONBLOCK keeps the open itself from blocking
// should the name be swapped for a FIFO between the check and the open.
func ReadFile(name string) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &os.PathError{Op: "read", Path: name, Err: fmt.Errorf("not a regular file but %s", fileKind(fi.Mode()))}
	}
	if fi.Size() > MaxFileSize {
		return nil, &os.PathError{Op: "read", Path: name, Err: fmt.Errorf("larger than %d MiB", MaxFileSize>>20)}
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, &os.PathError{Op: "read", Path: name, Err: fmt.Errorf("larger than %d MiB", MaxFileSize>>20)}
	}
	return data, nil
}

// fileKind names what a mode's type is, in words ("a directory"), where
// Go's FileMode prints "d---------".
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	}
	return "not a regular file"
}
