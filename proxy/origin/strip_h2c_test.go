package origin

import (
	"net/http"
	"reflect"
	"testing"
)

// StripH2C removes only the h2c offer: another upgrade in the same
// request (WebSocket) keeps its Upgrade and Connection tokens, and
// headers Connection names besides stay named.
func TestStripH2CRemovesOnlyTheH2COffer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in, want http.Header
		stripped bool
	}{
		{"h2c alone",
			http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}, "Http2-Settings": {""}},
			http.Header{}, true},
		{"h2c beside websocket",
			http.Header{"Connection": {"keep-alive, Upgrade", "HTTP2-Settings"}, "Upgrade": {"H2C, websocket"}, "Http2-Settings": {"AAA"}},
			http.Header{"Connection": {"keep-alive, Upgrade"}, "Upgrade": {"websocket"}}, true},
		{"settings without upgrade",
			http.Header{"Connection": {"HTTP2-Settings, X-A"}, "Http2-Settings": {""}, "X-A": {"1"}},
			http.Header{"Connection": {"X-A"}, "X-A": {"1"}}, true},
		{"websocket alone",
			http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}},
			http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}, false},
	} {
		got := tc.in.Clone()
		if s := StripH2C(got); s != tc.stripped || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: StripH2C(%v) = %v, %v; want %v, %v", tc.name, tc.in, s, got, tc.stripped, tc.want)
		}
		if tc.stripped && IsUpgrade(&http.Request{Header: got}) && HeaderHasToken(got, "Upgrade", "h2c") {
			t.Errorf("%s: still asks for h2c: %v", tc.name, got)
		}
	}
}
