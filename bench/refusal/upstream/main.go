// Command upstream is a DNS server for benchmarks: it answers every A
// query with the next address of 127.1.0.0/16 (TTL 60), so that each
// answer is a new address, on a loopback address, and writes the address
// it listens on to -addr-file.
package main

import (
	"flag"
	"log"
	"net"
	"os"
	"sync/atomic"

	"github.com/miekg/dns"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "UDP `ADDR` to listen on")
	addrFile := flag.String("addr-file", "", "write the address listened on to `FILE`")
	flag.Parse()
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(pc.LocalAddr().String()), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	var next atomic.Uint32
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			n := next.Add(1)
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(127, 1, byte(n>>8), byte(n))})
		}
		w.WriteMsg(m)
	})}
	log.Fatal(srv.ActivateAndServe())
}
