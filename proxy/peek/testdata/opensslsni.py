# An OpenSSL server for the differential tests of the ClientHello reader
# (hello_diff_test.go): for each connection on the port it prints, it
# feeds what the client sends to an OpenSSL 3 server handshake (Python's
# ssl module over memory BIOs) until sni_callback has run, the handshake
# fails, or the client has sent everything; then it answers on the raw
# socket with one line: "SNI <name>", "NOSNI", "ERR <why>" or
# "INCOMPLETE".
import socket, ssl, sys, threading

def serve(conn):
    seen = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    def cb(obj, name, c):
        seen.append(name)
        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
    ctx.sni_callback = cb
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_side=True)
    answer = "INCOMPLETE"
    conn.settimeout(10)
    try:
        while True:
            b = conn.recv(65536)
            if b:
                inc.write(b)
            else:
                inc.write_eof()
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                if seen:
                    break
                if not b:
                    break
                continue
            except Exception as e:
                if not seen:
                    answer = "ERR " + str(e).replace("\n", " ")
                break
            break
    except Exception as e:
        answer = "ERR " + str(e).replace("\n", " ")
    if seen:
        answer = "NOSNI" if seen[0] is None else "SNI " + seen[0]
    try:
        conn.sendall((answer + "\n").encode())
    finally:
        conn.close()

def main():
    ln = socket.socket()
    ln.bind(("127.0.0.1", 0))
    ln.listen(64)
    print(ln.getsockname()[1], flush=True)
    while True:
        c, _ = ln.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()

if __name__ == "__main__":
    main()
