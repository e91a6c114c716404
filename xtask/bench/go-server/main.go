// A Go net/http server for `cargo xtask bench --only busy`: the standard library's
// keep-alive server, as most Go services run it. `/sleep/MS` reads the request body and
// answers after MS milliseconds. The listener has SO_REUSEPORT, so a successor can bind
// the same port while this one still serves.
//
// Without -graceful, SIGTERM has Go's default effect (the process exits at once, open
// connections are cut by the kernel). With -graceful, SIGTERM calls Server.Shutdown: the
// listener closes, idle connections close, busy ones close after their response, and the
// process exits when none is left (at most 30 s).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on (with SO_REUSEPORT)")
	graceful := flag.Bool("graceful", false, "on SIGTERM, call Server.Shutdown instead of exiting at once")
	flag.Parse()

	config := net.ListenConfig{Control: reusePort}
	listener, err := config.Listen(context.Background(), "tcp", *listen)
	if err != nil {
		log.Fatalf("listen %s: %v", *listen, err)
	}
	server := &http.Server{Handler: http.HandlerFunc(sleep)}
	done := make(chan struct{})
	if *graceful {
		terms := make(chan os.Signal, 1)
		signal.Notify(terms, syscall.SIGTERM)
		go func() {
			<-terms
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := server.Shutdown(ctx); err != nil {
				log.Printf("shutdown: %v", err)
			}
			close(done)
		}()
	}
	fmt.Printf("listening %s\n", listener.Addr())
	if err := server.Serve(listener); err != http.ErrServerClosed {
		log.Fatalf("serve: %v", err)
	}
	<-done
}

// sleep answers /sleep/MS after MS milliseconds, having read the whole request body.
func sleep(w http.ResponseWriter, r *http.Request) {
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		return
	}
	ms, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/sleep/"))
	if err != nil {
		ms = 0
	}
	time.Sleep(time.Duration(ms) * time.Millisecond)
	io.WriteString(w, "ok\n")
}

// soReusePort is SO_REUSEPORT on Linux; the syscall package does not name it.
const soReusePort = 0xf

func reusePort(network, address string, conn syscall.RawConn) error {
	var sockErr error
	err := conn.Control(func(fd uintptr) {
		sockErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, soReusePort, 1)
	})
	if err != nil {
		return err
	}
	return sockErr
}
