package main

import (
	"log"
	"strings"

	"github.com/rs/zerolog"
)

// routeStdLog sends whatever the standard log package writes through
// logger, at warn level, one entry per line, so that every line egress
// writes is one JSON object (or one console line). net/http writes there
// on its own: the client's "Unsolicited response received on idle HTTP
// channel ..." (with the origin's bytes), and every http.Server without an
// ErrorLog (the admin listener's "http: TLS handshake error", "http:
// Accept error"). It returns the function that restores the standard
// logger.
func routeStdLog(logger zerolog.Logger) (restore func()) {
	out, flags, prefix := log.Writer(), log.Flags(), log.Prefix()
	log.SetOutput(stdLogWriter{logger.With().Str("component", "stdlog").Logger()})
	log.SetFlags(0) // zerolog stamps the time
	log.SetPrefix("")
	return func() {
		log.SetOutput(out)
		log.SetFlags(flags)
		log.SetPrefix(prefix)
	}
}

// stdLogWriter is a log.Logger's output: each Write is one line.
type stdLogWriter struct{ l zerolog.Logger }

func (w stdLogWriter) Write(p []byte) (int, error) {
	w.l.Warn().Msg(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
