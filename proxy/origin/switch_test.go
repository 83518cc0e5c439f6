package origin

import (
	"errors"
	"net/http"
	"testing"
)

// CheckSwitch passes a 101 only to protocols the request offered (RFC
// 9110 §7.8), and fails closed on one that names none.
func TestCheckSwitch(t *testing.T) {
	for _, tc := range []struct {
		name           string
		offered, named []string
		ok             bool
	}{
		{"the protocol asked", []string{"websocket"}, []string{"websocket"}, true},
		{"in another case", []string{"websocket"}, []string{"WebSocket"}, true},
		{"one of those offered", []string{"foo/2, websocket"}, []string{"websocket"}, true},
		{"another protocol", []string{"websocket"}, []string{"irc/6.9"}, false},
		{"one asked and one not", []string{"websocket"}, []string{"websocket, irc"}, false},
		{"another version of the protocol asked", []string{"foo/1"}, []string{"foo/2"}, false},
		{"h2c, never asked for", []string{"websocket"}, []string{"h2c"}, false},
		{"no protocol named", []string{"websocket"}, nil, false},
		{"an empty Upgrade", []string{"websocket"}, []string{" , "}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &http.Request{Header: http.Header{"Upgrade": tc.offered, "Connection": {"Upgrade"}}}
			resp := &http.Response{StatusCode: http.StatusSwitchingProtocols, Header: http.Header{}}
			if tc.named != nil {
				resp.Header["Upgrade"] = tc.named
			}
			err := CheckSwitch(req, resp)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckSwitch(%q → %q) = %v, want ok %v", tc.offered, tc.named, err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrOtherProtocol) || !errors.Is(err, ErrBadResponse)) {
				t.Errorf("error %v is not ErrOtherProtocol and ErrBadResponse", err)
			}
		})
	}
}
