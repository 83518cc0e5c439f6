package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
)

// rss is the resident set size of a process in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	check(err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			check(err)
			return kb << 10
		}
	}
	fail("no VmRSS for pid %d", pid)
	return 0
}

// cpuTime is the user and system CPU seconds a proxy process has used;
// -1 when unknown (not a process of ours).
func cpuTime(s *subject) float64 {
	if s.cmd == nil {
		return -1
	}
	return procCPU(strconv.Itoa(s.pid()))
}

// procCPU is the user + system CPU seconds of process pid ("self": this
// one, the load generator and the origins), or -1.
func procCPU(pid string) float64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks
}

// machineBusy is the busy and total jiffies of all CPUs (/proc/stat), for
// the share of the machine a run kept busy; zeros when unknown.
func machineBusy() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0
	}
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		total += x
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy, total
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux.
const clockTicks = 100

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func countLines(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return -1
	}
	return bytes.Count(b, []byte("\n"))
}

func versions(o options) map[string]string {
	v := map[string]string{"go": runtime.Version()}
	first := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	if o.squid != "" {
		v["squid"] = first(o.squid, "-v")
		if pkg := squidPackage(o.squid); pkg != "" {
			v["squid"] += " (Debian " + pkg + ")"
		}
	}
	if o.tinyproxy != "" {
		v["tinyproxy"] = first(o.tinyproxy, "-v")
	}
	if o.smokescreen != "" {
		v["smokescreen"] = first(o.smokescreen, "--version")
	}
	v["wrk"], _, _ = strings.Cut(first("wrk", "-v"), " Copyright")
	v["kernel"] = first("uname", "-sr")
	v["cpu"] = cpuModel()
	return v
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
