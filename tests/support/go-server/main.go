// A Go net/http server for tests/integrity.rs: the standard library's keep-alive
// server, as most Go services run it. It serves the files under -root (http.FileServer:
// on Linux the body goes out by sendfile) and, at /stream/N, a chunked response flushed
// in N pieces, each one an HTTP response's text (a body that looks like a head).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	root := flag.String("root", ".", "directory of the files served under /files/")
	flag.Parse()

	mux := http.NewServeMux()
	mux.Handle("/files/", http.StripPrefix("/files/", http.FileServer(http.Dir(*root))))
	mux.HandleFunc("/stream/", stream)
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	fmt.Printf("listening %s\n", listener.Addr())
	log.Fatal(http.Serve(listener, mux))
}

// stream writes /stream/N as N flushed pieces of a chunked body.
func stream(w http.ResponseWriter, r *http.Request) {
	pieces, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/stream/"))
	if err != nil {
		http.Error(w, "bad count", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "message/http")
	flusher := w.(http.Flusher)
	for i := 0; i < pieces; i++ {
		fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Piece: %d\r\n\r\nok", i)
		flusher.Flush()
	}
}
