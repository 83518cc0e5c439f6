package resolve

import (
	"bufio"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// DefaultHosts is the hosts file LookupNetIP reads.
const DefaultHosts = "/etc/hosts"

// hostsRecheck is how often the hosts file's modification time is looked
// at (Go's own resolver waits 5s too).
const hostsRecheck = 5 * time.Second

// hostsFile is the parsed hosts file, read again when it changes.
type hostsFile struct {
	mu      sync.Mutex
	checked time.Time
	mtime   time.Time
	size    int64
	byName  map[string][]netip.Addr // lower-case fully-qualified name
}

// lookup returns the addresses the hosts file at path gives name (lower
// case, fully qualified), in file order.
func (h *hostsFile) lookup(path, name string, now time.Time) []netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(h.checked) >= hostsRecheck || h.checked.IsZero() {
		h.checked = now
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			h.byName, h.mtime, h.size = nil, time.Time{}, 0
		case !fi.ModTime().Equal(h.mtime) || fi.Size() != h.size:
			h.mtime, h.size = fi.ModTime(), fi.Size()
			h.byName = readHosts(path)
		}
	}
	return h.byName[name]
}

// readHosts parses a hosts file: "ADDRESS NAME [ALIAS...]" lines, # starts
// a comment, unparsable lines are skipped as the C library does.
func readHosts(path string) map[string][]netip.Addr {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	m := map[string][]netip.Addr{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		a, err := netip.ParseAddr(fields[0])
		if err != nil {
			continue
		}
		a = a.Unmap().WithZone("")
		for _, n := range fields[1:] {
			n = strings.ToLower(strings.TrimSuffix(n, ".")) + "."
			m[n] = append(m[n], a)
		}
	}
	return m
}
