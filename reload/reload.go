// Package reload keeps egress's current policy and replaces it when the
// policy file changes or the process gets SIGHUP.
//
// A Watcher loads the file with policy.LoadWith and holds the result in an
// atomic pointer: data paths call Current (as their Policy hook) once per
// connection or query, so a new policy applies to new connections while open
// ones keep going. A file that does not load is refused: the old policy
// stays, every FILE:LINE:COL diagnostic is logged and OnReload is told (the
// admin listener counts it).
//
// Each change is counted once. An edit is often followed by a SIGHUP (an
// operator's habit, a ConfigMap reloader), and both would reload: a
// reload whose file holds the bytes of the last attempt and whose result
// is the policy in force (or the same refusal) is logged as "policy
// unchanged" and not reported to OnReload. A SIGHUP still reads and loads
// the file every time.
//
// It watches the file's directory, not the file, with fsnotify: editors
// replace a file by renaming a new one over it, and Kubernetes updates a
// ConfigMap volume by swapping its ..data symlink, and both would leave a
// watch on the file itself pointing at a dead inode.
//
// The package also has LogFile, a log writer reopened on SIGUSR1 for
// logrotate. It does nothing else: no listeners, no metrics.
package reload

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"

	"github.com/egress-proxy/egress/policy"
)

// DefaultDebounce is how long a Watcher waits after the last file event
// before it reads the file: an editor's save is several events (create,
// write, chmod, rename), and reading in the middle of them would refuse a
// half-written file.
const DefaultDebounce = 100 * time.Millisecond

// Trigger says what started a reload.
type Trigger string

const (
	TriggerSignal Trigger = "signal" // SIGHUP
	TriggerFile   Trigger = "file"   // a file system event
	TriggerCall   Trigger = "call"   // a call to Reload
)

// Watcher holds the current policy and reloads it. Create it with New;
// Start watches the file and SIGHUP, Close stops. Its methods are safe for
// concurrent use.
type Watcher struct {
	// Logger receives reloads and refusals. Set it before Start.
	Logger zerolog.Logger
	// OnReload, if set, is called after every reload attempt, on success
	// with the new policy and a nil error (before "policy reloaded" is
	// logged), on refusal with the policy kept and the error. Set it
	// before Start.
	OnReload func(p *policy.Policy, err error)
	// Debounce is the quiet time after a file event before reading;
	// 0 means DefaultDebounce.
	Debounce time.Duration
	// Check, if set, may refuse a policy that loaded (one serve cannot
	// put in force): the reload is then refused as an invalid file is.
	// Set it before Start.
	Check func(p *policy.Policy) error

	file string
	cur  atomic.Pointer[state]

	mu sync.Mutex // serialises reloads
	// lastSum is what the last attempt read: the policy's Hash (which
	// covers the files it includes), or for a refused one its text and
	// errors.
	lastSum string
	lastErr string // the last attempt's refusal, "" after a success
	// tried are the files the last attempt read or tried to read: a
	// refused policy may include a file not written yet, in a directory
	// not watched yet, and writing it must reload.
	tried []string
	// start is the policy loaded by New: what the listeners and the
	// logger were built from.
	start *policy.Policy

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

type state struct {
	p        *policy.Policy
	loadedAt time.Time
}

// New loads file and returns a Watcher holding it. It does not watch yet
// (see Start). An invalid file is an error: policy.Errors, wrapped.
func New(file string) (*Watcher, error) {
	data, err := ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	var tried []string
	p, err := Load(file, data, func(name string) ([]byte, error) {
		tried = append(tried, name)
		return ReadFile(name)
	})
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	w := &Watcher{file: file, lastSum: loadSum(p), start: p, tried: tried}
	w.cur.Store(&state{p: p, loadedAt: time.Now()})
	return w, nil
}

// Current returns the policy in force. It is meant as the Policy hook of
// the data paths: cheap, never nil.
func (w *Watcher) Current() *policy.Policy { return w.cur.Load().p }

// LoadedAt is when the current policy was loaded.
func (w *Watcher) LoadedAt() time.Time { return w.cur.Load().loadedAt }

// File is the policy file watched.
func (w *Watcher) File() string { return w.file }

// Reload reads and loads the file now. A valid file replaces the current
// policy; an invalid or unreadable one is refused and the current policy
// stays. The error says why it was refused. A file unchanged since the
// last attempt, with the same outcome, is not reported to OnReload (see
// the package comment).
func (w *Watcher) Reload() error { return w.reload(TriggerCall, true) }

// reload loads the file; with force false it skips a file whose bytes are
// those of the last attempt (file events that change nothing: chmod, a
// touch, the ConfigMap's other keys).
func (w *Watcher) reload(trig Trigger, force bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	old := w.Current()
	data, err := ReadFile(w.file)
	if err != nil {
		err = fmt.Errorf("read policy: %w", err)
		w.refuse(trig, old, err)
		return err
	}
	// Loaded whatever the event: a change may be in an included file.
	var tried []string
	// The files inject: names are read with it too, and so watched.
	p, err := Load(w.file, data, func(name string) ([]byte, error) {
		tried = append(tried, name)
		return ReadFile(name)
	})
	if err == nil && w.Check != nil {
		err = w.Check(p)
	}
	w.tried = tried
	sum := ""
	if err == nil {
		sum = loadSum(p)
	} else {
		h := sha256.Sum256(append(data, err.Error()...))
		sum = "refused:" + string(h[:])
	}
	same := sum == w.lastSum
	if !force && same {
		return nil
	}
	w.lastSum = sum
	if err != nil {
		err = fmt.Errorf("load policy: %w", err)
		if same && err.Error() == w.lastErr {
			// Refused already (the file event before this SIGHUP, say):
			// say it again, count it once.
			w.logRefusal(trig, old, err)
			return err
		}
		w.lastErr = err.Error()
		w.refuse(trig, old, err)
		return err
	}
	if same && w.lastErr == "" && loadSum(p) == loadSum(old) {
		w.Logger.Info().Str("file", w.file).Str("trigger", string(trig)).Str("hash", p.Hash()).
			Msg("policy unchanged since the last reload; nothing to do")
		return nil
	}
	w.lastErr = ""
	w.cur.Store(&state{p: p, loadedAt: time.Now()})
	ev := w.Logger.Info().Str("file", w.file).Str("trigger", string(trig)).Str("hash", p.Hash())
	if warn := w.RestartWarning(p); warn != "" {
		ev = ev.Str("warning", warn)
	}
	// OnReload puts the policy in force (serve stores it where every data
	// path reads it): log only after that, so that a client acting on the
	// line meets the new policy.
	if w.OnReload != nil {
		w.OnReload(p, nil)
	}
	ev.Msg("policy reloaded")
	return nil
}

// RestartWarning is what a reload to p warns when it changes settings
// read only at start ("listen, log: changed; restart egress for that to
// apply"), "" when it changes none.
func (w *Watcher) RestartWarning(p *policy.Policy) string {
	stale := RestartSettings(w.start, p)
	if len(stale) == 0 {
		return ""
	}
	return strings.Join(stale, ", ") + ": changed; restart egress for that to apply"
}

// RestartSettings names the settings that differ between the policy egress
// started with and p and that apply only at start: the listeners are bound,
// the logger built and the HTTP server's header limits set once.
func RestartSettings(start, p *policy.Policy) []string {
	var stale []string
	if !reflect.DeepEqual(p.Listen, start.Listen) {
		stale = append(stale, "listen")
	}
	if p.Log != start.Log {
		stale = append(stale, "log")
	}
	if p.Timeouts.Header != start.Timeouts.Header {
		stale = append(stale, "timeouts.header")
	}
	if p.Limits.MaxHeaderBytes != start.Limits.MaxHeaderBytes {
		stale = append(stale, "limits.max_header_bytes")
	}
	return stale
}

func (w *Watcher) refuse(trig Trigger, old *policy.Policy, err error) {
	w.logRefusal(trig, old, err)
	if w.OnReload != nil {
		w.OnReload(old, err)
	}
}

// logRefusal logs a refused file with every FILE:LINE:COL diagnostic.
func (w *Watcher) logRefusal(trig Trigger, old *policy.Policy, err error) {
	ev := w.Logger.Error().Str("file", w.file).Str("trigger", string(trig))
	var diags policy.Errors
	if errors.As(err, &diags) {
		lines := make([]string, len(diags))
		for i, d := range diags {
			lines[i] = d.String() // FILE:LINE:COL: message
		}
		ev = ev.Strs("errors", lines)
	} else {
		ev = ev.Err(err)
	}
	ev.Str("kept", old.Source).Str("kept_hash", old.Hash()).Msg("policy reload refused; keeping the current policy")
}

// Start watches the file's directory and SIGHUP until Close. It returns
// once both are in place, so a SIGHUP sent after Start returns reloads
// rather than kills the process. If the directory cannot be watched
// (inotify limits), it logs why and reloads on SIGHUP only.
func (w *Watcher) Start() error {
	if w.stop != nil {
		return errors.New("reload: already started")
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	dirs := w.watchDirs()
	fw, err := fsnotify.NewWatcher()
	if err == nil {
		for _, d := range dirs {
			if err = fw.Add(d); err != nil {
				fw.Close()
				break
			}
		}
	}
	if err != nil {
		fw = nil
		w.Logger.Warn().Err(err).Str("file", w.file).Msg("cannot watch the policy file; reloading on SIGHUP only")
	}
	w.stop = make(chan struct{})
	w.done = make(chan struct{})
	go w.loop(fw, hup, dirs)
	return nil
}

// Close stops watching. The current policy stays available.
func (w *Watcher) Close() error {
	if w.stop == nil {
		return nil
	}
	w.closeOnce.Do(func() { close(w.stop) })
	<-w.done
	return nil
}

// Run is Start, then Close when ctx is done.
func (w *Watcher) Run(ctx context.Context) error {
	if err := w.Start(); err != nil {
		return err
	}
	<-ctx.Done()
	return w.Close()
}

// watchDirs is the file's directory and, when the file is a symlink into
// another directory (not Kubernetes' ..data, which lives beside it), the
// directory of its target; and the same for every file the policy
// includes.
func (w *Watcher) watchDirs() []string {
	dir := filepath.Dir(w.file)
	dirs := []string{dir}
	for _, f := range w.files() {
		if d := filepath.Dir(f); !contains(dirs, d) {
			dirs = append(dirs, d)
		}
		if real, err := filepath.EvalSymlinks(f); err == nil {
			if rd := filepath.Dir(real); !contains(dirs, rd) && !isUnder(rd, dir) {
				dirs = append(dirs, rd)
			}
		}
	}
	return dirs
}

// files are the current policy's files and those the last attempt
// tried to read.
func (w *Watcher) files() []string {
	fs := w.Current().Files()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, f := range w.tried {
		if !contains(fs, f) {
			fs = append(fs, f)
		}
	}
	return fs
}

func isUnder(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// relevant reports whether an event on name may change what w.file reads:
// the file itself (written, or renamed over), Kubernetes' ..data symlink
// and its timestamped directories, or the target of a symlinked file.
func (w *Watcher) relevant(name string) bool {
	base := filepath.Base(name)
	if base == filepath.Base(w.file) || strings.HasPrefix(base, "..") {
		return true
	}
	for _, f := range w.files() {
		if filepath.Clean(name) == filepath.Clean(f) {
			return true // an included file
		}
		if real, err := filepath.EvalSymlinks(f); err == nil && filepath.Clean(name) == real {
			return true
		}
	}
	return false
}

func (w *Watcher) loop(fw *fsnotify.Watcher, hup chan os.Signal, dirs []string) {
	defer close(w.done)
	defer signal.Stop(hup)
	// A nil channel never delivers: without fw only SIGHUP reloads.
	var events chan fsnotify.Event
	var errs chan error
	if fw != nil {
		defer fw.Close()
		events, errs = fw.Events, fw.Errors
	}
	debounce := w.Debounce
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-w.stop:
			timer.Stop()
			return
		case <-hup:
			w.reload(TriggerSignal, true)
			var missed bool
			if dirs, missed = w.watchMore(fw, dirs); missed {
				timer.Reset(debounce)
			}
		case ev, ok := <-events:
			if !ok {
				return
			}
			if w.relevant(ev.Name) {
				timer.Reset(debounce)
			}
		case err, ok := <-errs:
			if !ok {
				return
			}
			// An overflow loses events: read the file to be sure.
			w.Logger.Warn().Err(err).Str("file", w.file).Msg("policy watch error; rereading the file")
			timer.Reset(debounce)
		case <-timer.C:
			w.reload(TriggerFile, false)
			var missed bool
			if dirs, missed = w.watchMore(fw, dirs); missed {
				timer.Reset(debounce)
			}
		}
	}
}

// watchMore adds the directories a reload made relevant to fw: a
// symlinked file may now point into another directory, an include name
// one. It returns the directories watched, and whether a file the policy
// reads already exists in one it just added: written between the reload
// that named it and the watch, it made no event, so it is read again.
func (w *Watcher) watchMore(fw *fsnotify.Watcher, dirs []string) ([]string, bool) {
	if fw == nil {
		return dirs, false
	}
	var added []string
	for _, d := range w.watchDirs() {
		if !contains(dirs, d) {
			if err := fw.Add(d); err == nil {
				dirs = append(dirs, d)
				added = append(added, d)
			}
		}
	}
	if len(added) == 0 {
		return dirs, false
	}
	loaded := w.Current().Files()
	for _, f := range w.files() {
		if contains(added, filepath.Dir(f)) && !contains(loaded, f) {
			if _, err := os.Stat(f); err == nil {
				return dirs, true
			}
		}
	}
	return dirs, false
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
